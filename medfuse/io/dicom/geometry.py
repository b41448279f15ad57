"""Slice-stack geometry in LPS: normal, sort order, spacing, gaps, tilt.

Pure NumPy on ImagePositionPatient / ImageOrientationPatient values. The
rules, and their tolerances, are the ones documented in docs/dicom-input.md:

* slices are sorted by their distance along the slice normal
  (row cosines × column cosines), ascending, so the volume's direction
  matrix [row, column, normal] is right-handed;
* the slice spacing is (last − first) / (n − 1) along the normal, so the
  first and last slices lie exactly on the grid;
* the stack is *uniform* when every gap between neighbours is within
  :data:`SPACING_RELATIVE_TOLERANCE` of the median gap (and at least
  :data:`SPACING_ABSOLUTE_TOLERANCE_MM`); a gap over
  :data:`MISSING_SLICE_FACTOR` × the median is reported as missing slices;
* the stack is *tilted* (gantry tilt, or a sheared stack) when the line
  through the first and last positions makes more than
  :data:`TILT_TOLERANCE_DEG` with the slice normal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPACING_RELATIVE_TOLERANCE = 0.05
SPACING_ABSOLUTE_TOLERANCE_MM = 0.01
MISSING_SLICE_FACTOR = 1.5
TILT_TOLERANCE_DEG = 0.1
DUPLICATE_POSITION_TOLERANCE_MM = 1e-3
#: Pixel and voxel sizes accepted (mm): beyond them ITK's matrices become singular or overflow.
PLAUSIBLE_SPACING_MM = (1e-3, 1e3)
#: Largest |coordinate| of an image position (mm): 100 m.
MAX_POSITION_MM = 1e5
#: Largest deviation of a direction cosine vector's length from 1.
COSINE_LENGTH_TOLERANCE = 0.01
#: Largest deviation from 90° between the row and column directions.
PERPENDICULAR_TOLERANCE_DEG = 0.5
#: Planes within this angle of an axis plane are named after it; beyond, "oblique".
OBLIQUE_LIMIT_DEG = 30.0


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal (3,) float64 of a plane given its ImageOrientationPatient (6,)."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, col)
    length = np.linalg.norm(normal)
    if length < 1e-6:
        raise ValueError("row and column direction cosines are parallel")
    return normal / length


def direction_matrix(orientation: np.ndarray) -> np.ndarray:
    """(3, 3) float64 LPS direction matrix whose columns are row, column, normal cosines."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    return np.column_stack([row, col, slice_normal(orientation)])


def orientation_problem(orientation: np.ndarray) -> str:
    """Why ImageOrientationPatient cannot describe a plane ("" when it can).

    The row and column cosines must each have unit length (within
    :data:`COSINE_LENGTH_TOLERANCE`) and be perpendicular (within
    :data:`PERPENDICULAR_TOLERANCE_DEG`); zero-length or parallel cosines
    have no slice normal at all.
    """
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:], dtype=np.float64)
    lengths = (float(np.linalg.norm(row)), float(np.linalg.norm(col)))
    if min(lengths) < 1e-6:
        return "ImageOrientationPatient has a zero-length direction (no plane)"
    if max(abs(n - 1.0) for n in lengths) > COSINE_LENGTH_TOLERANCE:
        return (f"ImageOrientationPatient direction cosines are not unit vectors "
                f"(lengths {lengths[0]:.3g}, {lengths[1]:.3g})")
    cos = abs(float(row @ col)) / (lengths[0] * lengths[1])
    if cos > np.cos(np.deg2rad(1.0)):
        return "ImageOrientationPatient row and column directions are parallel (no plane)"
    angle = float(np.rad2deg(np.arccos(min(1.0, cos))))
    if 90.0 - angle > PERPENDICULAR_TOLERANCE_DEG:
        return f"ImageOrientationPatient row and column directions are not perpendicular ({angle:.1f}°)"
    return ""


def orientation_label(orientation: np.ndarray) -> str:
    """'axial', 'coronal', 'sagittal' or 'oblique' from the slice normal (LPS); 'invalid' without a plane."""
    if orientation_problem(orientation):
        return "invalid"
    normal = np.abs(slice_normal(orientation))
    axis = int(np.argmax(normal))
    if normal[axis] < np.cos(np.deg2rad(OBLIQUE_LIMIT_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


@dataclass(frozen=True)
class StackGeometry:
    """How a set of parallel slices stacks up.

    Attributes
    ----------
    order : ndarray (N,) int
        Indices that sort the input positions along the normal, ascending.
    distances : ndarray (N,) float64
        Sorted distances along the normal (mm).
    spacing : float
        (last − first) / (N − 1); 0.0 for a single slice.
    max_deviation : float
        Largest |gap − median gap| in mm.
    tilt_deg : float
        Angle between the stacking line and the slice normal (degrees).
    duplicates : int
        Number of neighbouring pairs closer than DUPLICATE_POSITION_TOLERANCE_MM.
    gaps : tuple of (distance_mm, multiple)
        Where a gap exceeds MISSING_SLICE_FACTOR × the median gap: the
        distance along the normal where it starts and gap / median.
    """

    order: np.ndarray
    distances: np.ndarray
    spacing: float
    max_deviation: float
    tilt_deg: float
    duplicates: int
    gaps: tuple[tuple[float, float], ...]

    @property
    def uniform(self) -> bool:
        if self.distances.size < 3:
            return True
        return self.max_deviation <= spacing_tolerance(self.median_gap)

    @property
    def median_gap(self) -> float:
        diffs = np.diff(self.distances)
        return float(np.median(diffs)) if diffs.size else 0.0


def spacing_tolerance(gap: float) -> float:
    """Largest allowed deviation (mm) of a slice gap from the median gap."""
    return max(SPACING_ABSOLUTE_TOLERANCE_MM, SPACING_RELATIVE_TOLERANCE * abs(gap))


def analyse_stack(positions: np.ndarray, orientation: np.ndarray) -> StackGeometry:
    """Sort slices along their normal and measure spacing, gaps and tilt.

    Parameters
    ----------
    positions : ndarray (N, 3) float
        ImagePositionPatient of each slice (LPS mm).
    orientation : ndarray (6,) float
        The common ImageOrientationPatient.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    normal = slice_normal(orientation)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    distances = along[order]
    n = distances.size
    if n < 2:
        return StackGeometry(order, distances, 0.0, 0.0, 0.0, 0, ())
    diffs = np.diff(distances)
    duplicates = int(np.sum(diffs < DUPLICATE_POSITION_TOLERANCE_MM))
    distinct = diffs[diffs >= DUPLICATE_POSITION_TOLERANCE_MM]
    median = float(np.median(distinct)) if distinct.size else 0.0
    spacing = float((distances[-1] - distances[0]) / (n - 1))
    max_dev = float(np.max(np.abs(distinct - median))) if distinct.size else 0.0
    gaps = tuple(
        (float(distances[i]), float(diffs[i] / median))
        for i in range(n - 1)
        if median > 0 and diffs[i] > MISSING_SLICE_FACTOR * median
    )
    stack = positions[order[-1]] - positions[order[0]]
    length = np.linalg.norm(stack)
    tilt = 0.0
    if length > DUPLICATE_POSITION_TOLERANCE_MM:
        cos = min(1.0, abs(float(stack @ normal)) / length)
        tilt = float(np.rad2deg(np.arccos(cos)))
    return StackGeometry(order, distances, spacing, max_dev, tilt, duplicates, gaps)
