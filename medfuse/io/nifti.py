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

import io
import logging
import os
import struct
import zlib
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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

#: Voxel bytes from which a .nii.gz is compressed by several threads (below it a thread pool costs
#: more than it saves). The bytes written do not depend on the number of threads.
PARALLEL_GZIP_MIN_BYTES = 16 * 2**20

#: Most threads compressing one .nii.gz.
MAX_GZIP_THREADS = 4

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
        Parsed by nibabel; a ``.nii.gz`` is inflated by :class:`GzipReader`
        (same voxels as nibabel's own gzip reading, faster).
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
        if str(path).lower().endswith(".gz"):
            with GzipReader(path) as stream:
                img = _image_class(stream).from_stream(stream)
                affine = _affine(img, path)
                _check_size(img, path)
                data = img.get_fdata(dtype=np.float32)
        else:
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


def _image_class(stream) -> type:
    """NIfTI-1 or NIfTI-2, from the header size that opens the file (348 or 540, either byte order)."""
    start = stream.read(4)
    stream.seek(0)
    sizes = {int.from_bytes(start, "little"), int.from_bytes(start, "big")}
    return nib.Nifti2Image if 540 in sizes else nib.Nifti1Image


class GzipReader(io.RawIOBase):
    """A gzip file read front to back, inflated in large pieces.

    :class:`gzip.GzipFile` (nibabel's reader) inflates about 16 KiB per
    call: on a 512 x 512 x 200 float32 volume the overhead of those 13,000
    calls was a fifth of the read (1.29 -> 0.99 s). Here each call inflates
    up to :attr:`PIECE` bytes (1 MiB: larger pieces no longer stay in the
    CPU cache and made small files slower) (zlib checks
    every member's CRC-32 and size); members may follow one another (zero
    padding after the last is ignored, as gzip does). Seeking within the
    inflated piece in hand is free (nibabel seeks back to 0 after reading
    the header size), forward beyond it reads on, backward beyond it starts
    again from the beginning.
    """

    PIECE = 2**20

    def __init__(self, path: str | os.PathLike):
        super().__init__()
        self._path = path
        self._file = None
        self._restart()

    def _restart(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self._path, "rb")
        self._inflate = zlib.decompressobj(wbits=31)
        self._piece = memoryview(b"")
        self._used = 0
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            offset += self._position
        elif whence != io.SEEK_SET:
            raise io.UnsupportedOperation("a gzip stream can seek from its start or its position only")
        start = self._position - self._used  # where the inflated piece in hand starts
        if start <= offset <= start + len(self._piece):
            self._used, self._position = offset - start, offset  # inside it: no inflating again
        elif offset < self._position:
            self._restart()
        while self._position < offset and self._available():
            step = min(offset - self._position, len(self._piece) - self._used)
            self._used += step
            self._position += step
        return self._position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view) and self._available():
            step = min(len(view) - filled, len(self._piece) - self._used)
            view[filled:filled + step] = self._piece[self._used:self._used + step]
            self._used += step
            filled += step
        self._position += filled
        return filled

    def _available(self) -> bool:
        """Whether inflated bytes are waiting (inflating the next piece when needed); False at the end."""
        while self._used == len(self._piece):
            if self._inflate.eof:
                following = self._inflate.unused_data.lstrip(b"\0")
                while not following:
                    more = self._file.read(self.PIECE)
                    if not more:
                        return False
                    following = more.lstrip(b"\0")
                self._inflate = zlib.decompressobj(wbits=31)  # the next member
            else:
                following = self._inflate.unconsumed_tail or self._file.read(self.PIECE)
                if not following:
                    raise EOFError("the gzip file ends before its end-of-stream marker")
            self._piece = memoryview(self._inflate.decompress(following, self.PIECE))
            self._used = 0
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        super().close()


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
                array: Sequence[np.ndarray] | None = None, threads: int | None = None) -> Path:
    """Write a 3-D volume as NIfTI-1 with sform = qform = the RAS affine (code 1, scanner).

    The voxels are the image's own, keeping its pixel type (float32 for a
    Volume), or, with *array*, those of *array* on the grid of
    *volume_or_image* (whose pixels are then unused): a (Z, Y, X) array or
    any sequence of Z (Y, X) slices of one dtype, e.g. slices read from a file
    one at a time. The file is written to a temporary name next to *path* and
    renamed, so a failed write never leaves a partial file; it is created like
    a plain ``open()`` would (mode 0666 minus the umask). Voxels are streamed
    slice by slice (through gzip for ``.nii.gz``), so writing needs memory for
    a few slices, not a copy of the volume.

    ``.nii.gz`` is one standard gzip member (any gzip reader reads it) whose
    deflate stream is cut at the header and at every slice, each piece
    compressed on its own with the previous piece's last 32 KiB as dictionary
    (as ``pigz`` does), so pieces can be compressed by *threads* threads at
    once (default: the CPUs available, at most :data:`MAX_GZIP_THREADS`, for
    volumes of :data:`PARALLEL_GZIP_MIN_BYTES` or more; else 1). The bytes
    depend only on the voxels and the grid, never on the number of threads,
    and carry no timestamp: the same volume gives the same file.

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
    if threads is None:
        voxel_bytes = int(np.prod(size_zyx, dtype=np.int64)) * dtype.itemsize
        threads = min(_cpu_count(), MAX_GZIP_THREADS) if voxel_bytes >= PARALLEL_GZIP_MIN_BYTES else 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
    with atomic_open(path, "wb") as handle:
        if compressed:
            with PieceGzipWriter(handle, GZIP_LEVEL, threads) as stream:
                _write_single_file(nifti, slices, dtype, stream)
        else:
            _write_single_file(nifti, slices, dtype, handle)
    return path


def _write_single_file(nifti: nib.Nifti1Image, slices: Sequence[np.ndarray], dtype: np.dtype, stream) -> None:
    """Header, extension flag and voxels (slice by slice) of a single-file NIfTI into an open stream.

    A (Y, X) slice in C order is NIfTI's (i, j) plane in its on-disk (Fortran)
    order, so the slices are written as they are, k after k (without a
    ``bytes`` copy when a slice is already contiguous in the file's byte order).
    """
    nifti.update_header()
    header = nifti.header
    header.set_slope_inter(1.0, 0.0)  # unscaled, as nibabel writes same-dtype voxels
    header.write_to(stream)
    stream.write(b"\0" * (int(header.get_data_offset()) - stream.tell()))
    for plane in slices:
        stream.write(memoryview(np.ascontiguousarray(plane, dtype=dtype.newbyteorder(header.endianness))).cast("B"))


class PieceGzipWriter:
    """A write-only gzip stream whose pieces (one per ``write``) are compressed in parallel threads.

    One gzip member (RFC 1952: header with no name and mtime 0, one deflate
    stream, CRC-32 and size): each piece is compressed by its own raw-deflate
    compressor primed with the previous piece's last 32 KiB (the deflate
    window) and ended by a sync flush, which byte-aligns it so the pieces
    concatenate into one valid stream; an empty final block ends it. The bytes
    depend on the data and on where the writes cut it, not on *threads*.
    Pieces are handed to the threads as they are (no copy): the caller must
    not change a written buffer before :meth:`close`. At most *threads* + 1
    pieces are in flight.
    """

    _WINDOW = 32 * 1024

    def __init__(self, fileobj, level: int, threads: int = 1):
        self._file = fileobj
        self._level = level
        self._threads = max(1, int(threads))
        self._pool = ThreadPoolExecutor(self._threads) if self._threads > 1 else None
        self._pending: deque = deque()
        self._dictionary = memoryview(b"")
        self._crc = 0
        self._size = 0
        # gzip header: deflate, no flags, mtime 0, XFL 4 (fastest) / 2 (best) / 0 as Python's gzip writes it, OS unknown.
        extra = {1: 4, 9: 2}.get(level, 0)
        self._file.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + bytes([extra, 255]))

    def write(self, data) -> int:
        piece = memoryview(data).cast("B")
        if not piece.nbytes:
            return 0
        if self._pool is None:
            self._file.write(self._deflate(piece, self._dictionary))
        else:
            self._pending.append(self._pool.submit(self._deflate, piece, self._dictionary))
            while len(self._pending) > self._threads:
                self._file.write(self._pending.popleft().result())
        self._crc = zlib.crc32(piece, self._crc)
        self._size += piece.nbytes
        self._dictionary = piece[-self._WINDOW:]
        return piece.nbytes

    def tell(self) -> int:
        """Uncompressed bytes written so far."""
        return self._size

    def _deflate(self, piece: memoryview, dictionary: memoryview) -> bytes:
        compressor = (zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS, zdict=dictionary) if dictionary
                      else zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS))
        return compressor.compress(piece) + compressor.flush(zlib.Z_SYNC_FLUSH)

    def close(self) -> None:
        """Write the pieces still in flight, the final block and the trailer."""
        while self._pending:
            self._file.write(self._pending.popleft().result())
        self._file.write(zlib.compressobj(self._level, zlib.DEFLATED, -zlib.MAX_WBITS).flush(zlib.Z_FINISH))
        self._file.write(struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))

    def __enter__(self) -> PieceGzipWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.close()
        finally:
            if self._pool is not None:
                # After a failure the pieces still in flight are dropped (the temporary file is discarded).
                for future in self._pending:
                    future.cancel()
                self._pool.shutdown(wait=True)


def _cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
