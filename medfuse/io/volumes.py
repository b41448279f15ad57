"""One entry point for volumes: a NIfTI file or a DICOM series folder/file.

Also the non-finite voxel rule shared by ``medfuse convert`` and the
pipelines: NaN and ±Inf voxels are counted and replaced so no stage sees
them. The rule (documented in docs/dicom-input.md): NaN → the smallest
finite value of the volume (background), −Inf → the smallest finite value,
+Inf → the largest finite value; a volume with no finite voxel is refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.io.dicom.read import read_series
from medfuse.io.nifti import is_nifti_path, read_nifti
from medfuse.volume.model import Volume


def load_volume(path: str | os.PathLike, *, volume_index: int | None = None) -> Volume:
    """Load a 3-D volume from a NIfTI file or a DICOM series.

    Parameters
    ----------
    path : path-like
        ``*.nii`` / ``*.nii.gz``, a folder holding one DICOM series, or a
        single (multi-frame) DICOM file.
    volume_index : int, optional
        0-based volume of a 4-D input (required for 4-D inputs).

    Returns
    -------
    Volume
        float32 LPS image; DICOM inputs carry their SeriesReference.

    Raises
    ------
    InputError
        *path* does not exist or is not a supported kind.
    SeriesReadError
        The DICOM series cannot be read as one volume (reason given).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_file() and is_nifti_path(path):
        return read_nifti(path, volume_index=volume_index)
    return read_series(path, volume_index=volume_index)


@dataclass(frozen=True)
class NonFiniteReport:
    """How many voxels were not finite, and what replaced them."""

    nan: int
    pos_inf: int
    neg_inf: int
    low: float
    high: float

    @property
    def total(self) -> int:
        return self.nan + self.pos_inf + self.neg_inf

    def message(self) -> str:
        return (
            f"{self.total} non-finite voxel(s) replaced: {self.nan} NaN and {self.neg_inf} -Inf -> {self.low:g}, "
            f"{self.pos_inf} +Inf -> {self.high:g}"
        )


def replace_non_finite(volume: Volume) -> tuple[Volume, NonFiniteReport]:
    """Replace NaN/±Inf voxels by the documented rule (see module docstring).

    Returns the same volume object when every voxel is finite.

    Raises
    ------
    InputError
        When no voxel is finite.
    """
    array = sitk.GetArrayViewFromImage(volume.image)
    finite = np.isfinite(array)
    if finite.all():
        return volume, NonFiniteReport(0, 0, 0, 0.0, 0.0)
    if not finite.any():
        raise InputError(f"{volume.label or volume.source}: no finite voxel")
    low = float(array[finite].min())
    high = float(array[finite].max())
    nan = np.isnan(array)
    pos = np.isposinf(array)
    neg = np.isneginf(array)
    fixed = np.array(array, dtype=np.float32)
    fixed[nan | neg] = low
    fixed[pos] = high
    image = sitk.GetImageFromArray(fixed)
    image.CopyInformation(volume.image)
    report = NonFiniteReport(int(nan.sum()), int(pos.sum()), int(neg.sum()), low, high)
    return replace(volume, image=image), report
