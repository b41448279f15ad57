"""Library entry point: ``medfuse.fuse(images)`` for 2-D images, grey or colour.

Wires the NumPy core (:mod:`medfuse.core`) to the shipped CNN feature
extractor (:mod:`medfuse.features.registry`) and handles colour: colour
sources are fused on their BT.601 luma and the chroma of the colour sources
is averaged; a grey + colour pair (MRI + colour-mapped PET/SPECT) therefore
keeps the colour image's chroma. Equal-channel RGB images count as grey.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

import numpy as np

from medfuse.core.colour import is_grey_rgb, rgb_to_ycbcr, ycbcr_to_rgb
from medfuse.core.config import FusionConfig
from medfuse.core.extractor import ActivityExtractor
from medfuse.core.fusion import FusionResult, fuse_stack
from medfuse.errors import InputError

__all__ = ["fuse", "to_unit_float", "default_extractor"]


def fuse(
    images: Sequence[np.ndarray],
    *,
    config: FusionConfig | None = None,
    extractor: ActivityExtractor | None = None,
) -> FusionResult:
    """Fuse K >= 2 pre-registered 2-D images of the same size.

    Parameters
    ----------
    images : sequence of ndarray
        Each (H, W) grey or (H, W, 3) RGB; float in [0, 1], or integer
        (scaled by its dtype's range, e.g. uint8 / 255, uint16 / 65535).
    config : FusionConfig, optional
        None = ``FusionConfig()`` (medfuse's defaults; ``FusionConfig.paper()``
        for the paper's configuration).
    extractor : ActivityExtractor, optional
        Overrides the extractor loaded from ``config.model`` / ``config.depth``
        (only used when ``config.uses_cnn``).

    Returns
    -------
    FusionResult
        ``fused`` float32 in [0, 1]: (H, W) when every source is grey, else
        (H, W, 3) RGB. Weights (K, H, W) are those of the luma fusion.
        ``timings`` adds 'colour' (conversions) to the core's stages.
        The sources are filtered on up to two threads (same output as one).

    Raises
    ------
    InputError
        Fewer than two images, different sizes, unsupported shapes or dtypes,
        values outside [0, 1].
    ModelError
        The configured model cannot be loaded or fails its hash check.
    """
    config = config if config is not None else FusionConfig()
    if isinstance(images, np.ndarray) and not (images.ndim == 4 or (images.ndim == 3 and images.shape[-1] != 3)):
        # A (H, W, 3) array is one colour image, not H images of shape (W, 3).
        raise InputError(f"pass the images as a list or a (K, H, W[, 3]) array, got one array of shape {images.shape}")
    images = list(images)
    if len(images) < 2:
        raise InputError(f"fusion needs at least two images, got {len(images)}")
    started = time.perf_counter()
    units = [to_unit_float(image, index=i + 1) for i, image in enumerate(images)]
    sizes = [u.shape[:2] for u in units]
    if len(set(sizes)) > 1:
        listed = ", ".join(f"{h}x{w}" for h, w in sizes)
        raise InputError(f"images must all have the same size, got {listed} (height x width)")

    colour = [u.ndim == 3 and not is_grey_rgb(u) for u in units]
    luma = []
    chroma = []
    for unit, is_colour in zip(units, colour):
        if is_colour:
            ycbcr = rgb_to_ycbcr(unit)
            luma.append(ycbcr[..., 0])
            chroma.append(ycbcr[..., 1:])
        else:
            luma.append(unit[..., 0] if unit.ndim == 3 else unit)
    # Conversions can leave [0, 1] by float rounding only.
    lumas = np.clip(np.stack(luma), 0.0, 1.0).astype(np.float32, copy=False)
    convert_in = time.perf_counter() - started

    if config.uses_cnn and extractor is None:
        extractor = default_extractor(config.model, config.depth)
    # One call on a (usually interactive) 2-D pair: filter the sources on up
    # to two cores (the output does not depend on the thread count).
    result = fuse_stack(lumas, config, extractor, threads=min(2, os.cpu_count() or 1))
    if not chroma:
        return dataclasses.replace(result, timings={**result.timings, "colour": convert_in})

    started = time.perf_counter()
    mean_chroma = np.mean(chroma, axis=0, dtype=np.float64)
    ycbcr = np.concatenate([result.fused[..., None], mean_chroma], axis=-1)
    rgb = np.clip(ycbcr_to_rgb(ycbcr), 0.0, 1.0)
    timings = {**result.timings, "colour": convert_in + time.perf_counter() - started}
    return dataclasses.replace(result, fused=rgb, timings=timings)


def to_unit_float(image: np.ndarray, *, index: int | None = None) -> np.ndarray:
    """One image as float32 in [0, 1], shape (H, W) or (H, W, 3).

    Integer images are scaled by their dtype's range ((x − min) / (max − min)
    of the dtype); float images must already lie in [0, 1]. (H, W, 1) becomes
    (H, W). Float values within 1e-5 outside [0, 1] (round-off) are clipped.
    Anything else raises InputError naming the image (1-based ``index``).
    """
    which = f"image {index}" if index is not None else "image"
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise InputError(f"{which} must be (H, W) grey or (H, W, 3) RGB, got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise InputError(f"{which} is empty (shape {array.shape})")
    if array.dtype == np.bool_ or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise InputError(f"{which} has unsupported dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        unit = array.astype(np.float32)
        if info.min != 0:
            unit -= np.float32(info.min)
        unit /= np.float32(info.max - info.min)
        return unit
    unit = array.astype(np.float32, copy=False)
    low, high = float(unit.min()), float(unit.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError(f"{which} contains NaN or infinite values")
    if low < -1e-5 or high > 1.0 + 1e-5:
        raise InputError(f"{which} is float with values in [{low:.6g}, {high:.6g}]; float images must lie in [0, 1]")
    if low < 0.0 or high > 1.0:
        unit = np.clip(unit, 0.0, 1.0)  # float round-off
    return unit


_extractors: dict[tuple[str | None, int | None], ActivityExtractor] = {}


def default_extractor(model: str | None = None, depth: int | None = None) -> ActivityExtractor:
    """The registry's extractor for (model, depth), None = shipped default; cached per process."""
    key = (model, depth)
    if key not in _extractors:
        from medfuse.features.registry import load_extractor

        _extractors[key] = load_extractor(model, depth)
    return _extractors[key]
