"""NIfTI-1/2 volumes in and out, with the RAS ↔ LPS conversion written out.

NIfTI (and nibabel) place voxels in RAS+ world space; DICOM, ITK and the
:class:`~medfuse.volume.model.Volume` type use LPS+. The two differ by the
sign of the first two world axes, so

    affine_LPS = diag(-1, -1, 1, 1) @ affine_RAS      (and back the same way).

The LPS affine's 3×3 part is ``direction @ diag(spacing)`` and its last
column is the origin. Array axes: a NIfTI array is indexed (i, j, k) =
(x, y, z); SimpleITK's array view is (z, y, x); the two are transposes.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from medfuse.atomic import atomic_open
from medfuse.errors import InputError, WriteError
from medfuse.io.dicom.geometry import MAX_POSITION_MM, PLAUSIBLE_SPACING_MM
from medfuse.volume.model import Volume

#: Flip between RAS and LPS world coordinates (its own inverse).
RAS_LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])

#: gzip level for .nii.gz: on the shared CT, 1 was 9x faster than 6 for 14 % more bytes.
GZIP_LEVEL = 1

#: Largest |D^T D - I| accepted for the direction part of an affine;
#: beyond it the affine has shear (e.g. an uncorrected gantry tilt).
ORTHOGONALITY_TOLERANCE = 1e-4


def is_nifti_path(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | os.PathLike, *, volume_index: int | None = None) -> Volume:
    """Read a NIfTI file as a float32 LPS :class:`Volume`.

    Parameters
    ----------
    path : path-like
        ``.nii`` or ``.nii.gz``. The sform is used when its code is set,
        else the qform (nibabel's ``affine``); scl_slope/scl_inter applied.
    volume_index : int, optional
        For a 4-D file, the 0-based volume to read (required for 4-D).

    Returns
    -------
    Volume
        float32 image (x, y, z) = NIfTI (i, j, k); ``modality`` "",
        ``references`` None.

    Raises
    ------
    InputError
        Unreadable file, 4-D without *volume_index*, more than 4 dimensions,
        or a sheared affine.
    """
    path = Path(path)
    logger = nib.imageglobals.logger
    level = logger.level
    try:
        # nibabel logs each header fix it makes to stderr; a refusal below says what matters, in one line.
        logger.setLevel(logging.CRITICAL + 1)
        img = nib.load(str(path))
        affine = _affine(img, path)
        _check_size(img, path)
        data = img.get_fdata(dtype=np.float32)
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except InputError:
        raise
    except MemoryError:
        raise InputError(f"{path}: not enough memory to read its voxels") from None
    except Exception as exc:  # nibabel raises many types for a bad file
        raise InputError(f"{path}: not a readable NIfTI file ({type(exc).__name__}: {_one_line(exc)})") from exc
    finally:
        logger.setLevel(level)
    data = _pick_volume(data, path, volume_index)
    image = image_from_ras(data, affine, path)
    return Volume(image=image, modality="", references=None, source=path, label=path.name)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _affine(img, path: Path) -> np.ndarray:
    """The sform when its code is set and it is finite, else such a qform, else nibabel's default.

    An orientation whose code is set but that holds an infinite or NaN
    value is never used; when no other is set the file is refused (its
    voxels would be placed nowhere).
    """
    header = img.header
    broken = []
    for name, (matrix, code) in (("sform", header.get_sform(coded=True)), ("qform", header.get_qform(coded=True))):
        if matrix is None or not code:
            continue
        if np.all(np.isfinite(matrix)):
            return matrix
        broken.append(f"{name} (code {int(code)})")
    if broken:
        raise InputError(f"{path}: {' and '.join(broken)} hold non-finite values and no other orientation is set")
    return img.affine


def _check_size(img, path: Path) -> None:
    """Refuse a header whose shape has no voxels, or (uncompressed) more bytes than the file holds."""
    shape = img.shape
    if not shape or min(shape) <= 0:
        raise InputError(f"{path}: header declares shape {shape}: no voxels")
    if str(path).lower().endswith(".nii"):
        needed = int(img.header.get_data_offset()) + int(np.prod(shape, dtype=np.float64)) * img.get_data_dtype().itemsize
        size = path.stat().st_size
        if needed > size:
            raise InputError(f"{path}: header declares {'x'.join(map(str, shape))} voxels ({needed} bytes) but "
                             f"the file has {size} bytes")


def _pick_volume(data: np.ndarray, path: Path, volume_index: int | None) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1 and volume_index is None:
        data = data[..., 0]
    if data.ndim == 2:
        return data[..., np.newaxis]
    if data.ndim == 3:
        if volume_index not in (None, 0):
            raise InputError(f"{path}: 3-D file has no volume {volume_index}")
        return data
    if data.ndim == 4:
        if volume_index is None:
            raise InputError(f"{path}: 4-D file with {data.shape[3]} volumes; choose one with --volume-index")
        if not 0 <= volume_index < data.shape[3]:
            raise InputError(f"{path}: volume index {volume_index} out of range (file has {data.shape[3]})")
        return data[..., volume_index]
    raise InputError(f"{path}: {data.ndim}-D data is not supported")


def image_from_ras(data_ijk: np.ndarray, affine_ras: np.ndarray, source: Path | str = "array") -> sitk.Image:
    """SimpleITK float32 LPS image from an (i, j, k) array and its RAS affine."""
    affine_lps = RAS_LPS_FLIP @ np.asarray(affine_ras, dtype=np.float64)
    linear = affine_lps[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(linear)):
        raise InputError(f"{source}: affine has a zero or non-finite voxel size")
    low, high = PLAUSIBLE_SPACING_MM
    if np.any(spacing < low) or np.any(spacing > high):
        raise InputError(f"{source}: voxel size {'x'.join(f'{v:g}' for v in spacing)} mm is outside "
                         f"{low:g}-{high:g} mm")
    if not np.all(np.isfinite(affine_lps[:3, 3])) or np.any(np.abs(affine_lps[:3, 3]) > MAX_POSITION_MM):
        raise InputError(f"{source}: affine has a non-finite origin or one beyond {MAX_POSITION_MM:g} mm")
    direction = linear / spacing
    if np.max(np.abs(direction.T @ direction - np.eye(3))) > ORTHOGONALITY_TOLERANCE:
        raise InputError(f"{source}: affine has shear (e.g. uncorrected gantry tilt); not supported")
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data_ijk, (2, 1, 0)), dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(tuple(float(v) for v in affine_lps[:3, 3]))
    return image


def lps_affine(image: sitk.Image) -> np.ndarray:
    """(4, 4) float64 affine mapping (x, y, z) voxel indices to LPS mm."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return affine


def ras_affine(image: sitk.Image) -> np.ndarray:
    """(4, 4) float64 affine mapping (i, j, k) voxel indices to RAS mm (NIfTI)."""
    return RAS_LPS_FLIP @ lps_affine(image)


def write_nifti(volume_or_image: Volume | sitk.Image, path: str | os.PathLike, *,
                array: Sequence[np.ndarray] | None = None) -> Path:
    """Write a 3-D volume as NIfTI-1 with sform = qform = the RAS affine (code 1, scanner).

    The voxels are the image's own, keeping its pixel type (float32 for a
    Volume), or, with *array*, those of *array* on the grid of
    *volume_or_image* (whose pixels are then unused): a (Z, Y, X) array or
    any sequence of Z (Y, X) slices of one dtype, e.g. slices read from a file
    one at a time. The file is written to a temporary name next to *path* and
    renamed, so a failed write never leaves a partial file; it is created like
    a plain ``open()`` would (mode 0666 minus the umask). Voxels are streamed
    slice by slice (through gzip for ``.nii.gz``), so writing needs memory for
    one slice, not a copy of the volume. Gzip output carries no timestamp, so
    the same volume gives the same bytes.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    WriteError
        Not a 3-D scalar image, slices that do not fit its grid, or the file
        could not be written.
    """
    image = volume_or_image.image if isinstance(volume_or_image, Volume) else volume_or_image
    path = Path(path)
    if not is_nifti_path(path):
        raise WriteError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise WriteError(f"{path}: only 3-D scalar images can be written as NIfTI")
    slices = sitk.GetArrayViewFromImage(image) if array is None else array
    size_zyx = image.GetSize()[::-1]
    if len(slices) != size_zyx[0] or np.shape(slices[0]) != size_zyx[1:]:
        raise WriteError(f"{path}: {len(slices)} slices of shape {np.shape(slices[0])} do not fit the grid "
                         f"(z, y, x) = {size_zyx}")
    affine = ras_affine(image)
    # The header comes from nibabel, made for a zero-strided stand-in of the right shape and dtype (no
    # memory): the voxels themselves are streamed below. Same dtype in and out, so nibabel would apply no
    # scaling whatever the values (tested: same bytes as writing the whole array through nibabel).
    dtype = np.asarray(slices[0]).dtype
    nifti = nib.Nifti1Image(np.broadcast_to(np.zeros((), dtype), image.GetSize()), affine)
    nifti.set_sform(affine, code=1)
    nifti.set_qform(affine, code=1)
    nifti.header.set_xyzt_units(xyz="mm")
    compressed = str(path).lower().endswith(".gz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    with atomic_open(path, "wb") as handle:
        if compressed:
            with gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="", compresslevel=GZIP_LEVEL) as stream:
                _write_single_file(nifti, slices, dtype, stream)
        else:
            _write_single_file(nifti, slices, dtype, handle)
    return path


def _write_single_file(nifti: nib.Nifti1Image, slices: Sequence[np.ndarray], dtype: np.dtype, stream) -> None:
    """Header, extension flag and voxels (slice by slice) of a single-file NIfTI into an open stream.

    A (Y, X) slice in C order is NIfTI's (i, j) plane in its on-disk (Fortran)
    order, so the slices are written as they are, k after k.
    """
    nifti.update_header()
    header = nifti.header
    header.set_slope_inter(1.0, 0.0)  # unscaled, as nibabel writes same-dtype voxels
    header.write_to(stream)
    stream.write(b"\0" * (int(header.get_data_offset()) - stream.tell()))
    for plane in slices:
        stream.write(np.ascontiguousarray(plane, dtype=dtype.newbyteorder(header.endianness)).tobytes())
