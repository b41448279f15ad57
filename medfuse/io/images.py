"""Read and write 2-D images (PNG, TIFF, JPEG; 8- or 16-bit) with Pillow.

``read_image`` returns the stored samples unchanged: uint8 or uint16, (H, W)
grey or (H, W, 3) RGB. ``write_image`` writes atomically: to a temporary file
in the destination folder, renamed over the destination only once complete,
so a failed write never leaves a partial file (or destroys an existing one).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medfuse.atomic import atomic_open
from medfuse.errors import InputError

__all__ = ["read_image", "write_image", "image_format", "FORMATS"]

#: File suffix -> (Pillow format, bit depths it can store).
FORMATS: dict[str, tuple[str, tuple[int, ...]]] = {
    ".png": ("PNG", (8, 16)),
    ".tif": ("TIFF", (8, 16)),
    ".tiff": ("TIFF", (8, 16)),
    ".jpg": ("JPEG", (8,)),
    ".jpeg": ("JPEG", (8,)),
}


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read a 2-D image file.

    Parameters
    ----------
    path : path-like
        PNG, TIFF or JPEG (anything Pillow opens as grey, 16-bit grey, RGB,
        RGBA, palette or CMYK).

    Returns
    -------
    ndarray
        (H, W) uint8 or uint16 for grey; (H, W, 3) uint8 for colour. Palette
        and CMYK images are converted to RGB; an alpha channel is dropped when
        fully opaque. 32-bit integer images are accepted when their values fit
        16 bits; float images (TIFF mode F) are returned as float32.

    Raises
    ------
    InputError
        Missing or unreadable file, not an image, multi-frame stack,
        transparency, or a sample format that cannot be represented.
    """
    path = Path(path)
    try:
        with Image.open(path) as image:
            image.load()
            frames = getattr(image, "n_frames", 1)
            if frames > 1:
                raise InputError(f"{path} holds {frames} frames; only single 2-D images can be fused")
            return _to_array(image, path)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"cannot read {path}: it is a directory") from None
    except UnidentifiedImageError:
        raise InputError(f"cannot read {path}: not a PNG, TIFF or JPEG image") from None
    except Image.DecompressionBombError as exc:
        raise InputError(f"cannot read {path}: {' '.join(str(exc).split())}") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's truncated / corrupt file errors
        raise InputError(f"cannot read {path}: {' '.join(str(exc).split())}") from None


def _to_array(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGBA" if mode in ("PA",) or "transparency" in image.info else ("L" if mode == "1" else "RGB"))
        mode = image.mode
    if mode in ("LA", "RGBA", "La", "RGBa"):
        array = np.asarray(image)
        if not np.all(array[..., -1] == 255):
            raise InputError(f"{path} has transparent pixels; flatten it to grey or RGB first")
        array = array[..., :-1]
        return array[..., 0] if array.shape[-1] == 1 else np.ascontiguousarray(array)
    if mode in ("L", "RGB"):
        return np.asarray(image).copy()
    if mode.startswith("I;16"):
        return np.asarray(image).astype(np.uint16)
    if mode == "I":
        array = np.asarray(image)
        if array.min() < 0 or array.max() > 65535:
            raise InputError(f"{path} holds 32-bit integers outside 0..65535; convert it to 16-bit first")
        return array.astype(np.uint16)
    if mode == "F":
        return np.asarray(image, dtype=np.float32).copy()
    raise InputError(f"{path} has unsupported image mode {mode}")


def image_format(path: str | os.PathLike) -> tuple[str, tuple[int, ...]]:
    """(Pillow format name, supported bit depths) for an output path; InputError for other suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"cannot write {path}: output must end in {', '.join(FORMATS)}")
    return FORMATS[suffix]


def write_image(path: str | os.PathLike, array: np.ndarray, *, bit_depth: int | None = None) -> Path:
    """Write a 2-D grey or RGB image atomically.

    Parameters
    ----------
    path : path-like
        Destination; the suffix chooses the format (.png, .tif/.tiff, .jpg/.jpeg).
    array : ndarray
        (H, W) or (H, W, 3); uint8, uint16, or float in [0, 1].
    bit_depth : {8, 16}, optional
        Sample depth of the file. Default: 16 for uint16 input, else 8. Float
        data is scaled by 255 or 65535 and rounded. RGB is written at 8 bits
        (Pillow does not write 16-bit RGB); JPEG is 8-bit only.

    Returns
    -------
    Path
        The written path.

    Raises
    ------
    InputError
        Unsupported suffix, shape, dtype or bit depth.
    WriteError
        The folder does not exist or is not writable, or the write failed
        (nothing is left at ``path`` then).
    """
    path = Path(path)
    fmt, depths = image_format(path)
    array = np.asarray(array)
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] == 3)):
        raise InputError(f"cannot write {path}: need (H, W) or (H, W, 3) data, got shape {array.shape}")
    if bit_depth is None:
        bit_depth = 16 if array.dtype == np.uint16 else 8
    if bit_depth not in (8, 16):
        raise InputError(f"cannot write {path}: bit depth must be 8 or 16, got {bit_depth}")
    if bit_depth not in depths or (bit_depth == 16 and array.ndim == 3):
        kind = "RGB" if array.ndim == 3 else "grey"
        raise InputError(f"cannot write {path}: {fmt} {kind} cannot be stored at {bit_depth} bits")
    samples = _samples(array, bit_depth, path)
    image = Image.fromarray(samples)
    with atomic_open(path, "wb") as stream:
        image.save(stream, format=fmt)
    return path


def _samples(array: np.ndarray, bit_depth: int, path: Path) -> np.ndarray:
    top = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(array.min()), float(array.max())
        if not (low >= 0.0 and high <= 1.0):
            raise InputError(f"cannot write {path}: float data must lie in [0, 1], got [{low:.6g}, {high:.6g}]")
        return np.rint(array * top).astype(dtype)
    if array.dtype == np.uint8:
        return array.astype(dtype) * (257 if bit_depth == 16 else 1)
    if array.dtype == np.uint16:
        if bit_depth == 8:
            raise InputError(f"cannot write {path}: uint16 data needs 16 bits (convert it first)")
        return array
    raise InputError(f"cannot write {path}: unsupported dtype {array.dtype}")


