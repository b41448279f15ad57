"""Visual check of a registration: checkerboard and edge overlays.

Three orthogonal mid-slices of the fixed grid (axial, coronal, sagittal in
the fixed image's index space), each at its physical aspect ratio and zoomed
to a common height.
Top row: a checkerboard alternating fixed and moved tiles, so a misalignment
shows as broken edges at tile borders. Bottom row: the fixed image in grey
with the moved image's edges in magenta. The caller writes the array (PNG)
with the I/O layer; this module only computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from medfuse.errors import InputError


@dataclass(frozen=True)
class OverlayConfig:
    """Parameters of :func:`registration_overlay`.

    Attributes
    ----------
    tiles : int
        Checkerboard tiles along the longest side of each panel. Default 8.
    percentiles : tuple of float
        Display window of each image (percentiles of its voxels above the
        image minimum, i.e. without padding). Default (1, 99.5).
    edge_percentile : float
        Gradient magnitudes above this percentile of the moved slice count as
        edges. Default 90.
    edge_smoothing_px : float
        Gaussian smoothing (display pixels) before the edge detector, so
        noise and interpolation steps do not count as edges. Default 1.5.
    edge_colour : tuple of int
        RGB of the moved image's edges. Default magenta (255, 0, 255).
    pixel_mm : float or None
        Display pixel size in mm; None (default) uses the finest spacing.
    """

    tiles: int = 8
    percentiles: tuple[float, float] = (1.0, 99.5)
    edge_percentile: float = 90.0
    edge_smoothing_px: float = 1.5
    edge_colour: tuple[int, int, int] = (255, 0, 255)
    pixel_mm: float | None = None

    def __post_init__(self) -> None:
        if self.tiles < 1:
            raise InputError(f"overlay tiles must be >= 1, got {self.tiles}")
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise InputError(f"overlay percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")


def registration_overlay(
    fixed: sitk.Image,
    moved: sitk.Image,
    coverage: sitk.Image | None = None,
    config: OverlayConfig | None = None,
) -> np.ndarray:
    """RGB picture of three orthogonal mid-slices: checkerboard over edge overlay.

    Parameters
    ----------
    fixed : SimpleITK.Image
        3-D fixed image.
    moved : SimpleITK.Image
        The moving image resampled onto the fixed grid (same size).
    coverage : SimpleITK.Image, optional
        uint8 mask of where *moved* has data; outside it the checkerboard
        shows the fixed image only.
    config : OverlayConfig, optional

    Returns
    -------
    ndarray (H, W, 3) uint8
        Two rows (checkerboard, edges) of three panels (axial, coronal, sagittal).
    """
    config = config or OverlayConfig()
    if fixed.GetSize() != moved.GetSize():
        raise InputError(f"moved image size {moved.GetSize()} differs from the fixed grid {fixed.GetSize()}")
    fixed_array = _normalised(sitk.GetArrayFromImage(fixed), config.percentiles)
    moved_array = _normalised(sitk.GetArrayFromImage(moved), config.percentiles)
    covered = (
        sitk.GetArrayFromImage(coverage) > 0 if coverage is not None else np.ones(fixed_array.shape, dtype=bool)
    )
    spacing_zyx = np.asarray(fixed.GetSpacing(), dtype=float)[::-1]
    pixel_mm = config.pixel_mm or float(spacing_zyx.min())
    # Superior up in coronal and sagittal views when the slice axis points superior (LPS +z).
    flip_vertical = float(fixed.GetDirection()[8]) >= 0
    planes = []
    for axis in range(3):
        slices = [_mid_slice(a, axis) for a in (fixed_array, moved_array, covered)]
        plane_spacing = np.delete(spacing_zyx, axis)
        slices = [_to_aspect(s, plane_spacing, pixel_mm, order=0 if s.dtype == bool else 1) for s in slices]
        if axis > 0 and flip_vertical:
            slices = [s[::-1] for s in slices]
        planes.append(slices)
    # One height for the three panels (uniform zoom keeps each aspect ratio).
    height = max(plane[0].shape[0] for plane in planes)
    checker_row, edge_row = [], []
    for slices in planes:
        zoom = height / slices[0].shape[0]
        if zoom != 1.0:
            slices = [ndimage.zoom(s, zoom, order=0 if s.dtype == bool else 1, mode="nearest") for s in slices]
        fixed_slice, moved_slice, covered_slice = slices
        checker_row.append(_checkerboard(fixed_slice, moved_slice, covered_slice, config.tiles))
        edge_row.append(_edges(fixed_slice, moved_slice, covered_slice, config))
    return np.concatenate([_row(checker_row), _row(edge_row)], axis=0)


def _normalised(array: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    # The window ignores the padding value (CT -3024 outside the reconstruction
    # circle, zeros around MR), which would otherwise dominate the percentiles.
    content = array[array > array.min()]
    low, high = np.percentile(content if content.size else array, percentiles)
    if high <= low:
        return np.zeros(array.shape, dtype=np.float32)
    return np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def _mid_slice(array: np.ndarray, axis: int) -> np.ndarray:
    return np.take(array, array.shape[axis] // 2, axis=axis)


def _to_aspect(plane: np.ndarray, spacing: np.ndarray, pixel_mm: float, order: int) -> np.ndarray:
    zoom = spacing / pixel_mm
    if np.allclose(zoom, 1.0):
        return plane
    return ndimage.zoom(plane, zoom, order=order, mode="nearest")


def _checkerboard(fixed: np.ndarray, moved: np.ndarray, covered: np.ndarray, tiles: int) -> np.ndarray:
    tile = max(1, int(np.ceil(max(fixed.shape) / tiles)))
    rows, cols = np.indices(fixed.shape)
    moved_tiles = ((rows // tile + cols // tile) % 2 == 1) & covered
    grey = np.where(moved_tiles, moved, fixed)
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _edges(fixed: np.ndarray, moved: np.ndarray, covered: np.ndarray, config: OverlayConfig) -> np.ndarray:
    smooth = ndimage.gaussian_filter(moved, config.edge_smoothing_px)
    magnitude = np.hypot(ndimage.sobel(smooth, axis=0), ndimage.sobel(smooth, axis=1))
    threshold = np.percentile(magnitude[covered], config.edge_percentile) if covered.any() else np.inf
    edges = (magnitude > threshold) & covered & (magnitude > 0)
    rgb = np.repeat((fixed * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    rgb[edges] = config.edge_colour
    return rgb


def _row(panels: list[np.ndarray]) -> np.ndarray:
    height = max(panel.shape[0] for panel in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)
