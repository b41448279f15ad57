"""The fusion's sources, coverage masks and output on the fixed grid, kept in files.

A 512 x 512 x 200 CT with an MR resampled onto its grid is 400 MB of float32
sources, 100 MB of masks and 200 MB of output; holding them in memory beside
the inputs was what kept fuse-study's peak memory at 1.1-1.2 GB
(docs/fuse-study.md). Here every volume on the fixed grid goes to a ``.npy``
file in a scratch folder as soon as a slab of it exists, and the fusion reads
and writes slabs of these files, so memory holds only a few slabs at a time.

Files of a staging folder (standard ``.npy``, readable with ``numpy.load``)::

    sources.npy   (K, Z, Y, X) float32   the sources mapped to [0, 1]
    cover.npy     (K, Z, Y, X) bool      where each source has data
    fused.npy     (Z, Y, X)    float32   the fusion's output

Reads and writes are positioned file I/O (``os.pread``/``os.pwrite``), never
memory maps: pages of a mapped file count in the resident memory of the
process that touches them, and a worker that mapped the sources would end up
holding all of them. The same folder serves the fusion in this process and in
local Dask workers (each opens it by its path).

:func:`stage_on_grid` fills a folder from the fixed volume and the moving
volumes with their registration transforms, slab by slab: each moving slab is
resampled (:func:`medfuse.volume.resampling.resample_slabs`), mapped to
[0, 1] with its :class:`~medfuse.volume.intensity.IntensityMapping`, and
written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.lib.format import dtype_to_descr, read_array_header_1_0, read_magic, write_array_header_1_0

from medfuse.errors import FusionError, InputError, WriteError, os_error_reason
from medfuse.volume.intensity import IntensityMapping
from medfuse.volume.model import Volume
from medfuse.volume.resampling import resample_slabs

__all__ = ["STAGE_SLAB_SLICES", "StagedSlices", "StagedVolumes", "stage_on_grid"]

#: Fixed slices per slab while staging (8 slices of 512 x 512 float32: 8 MB).
STAGE_SLAB_SLICES = 8

_FILES = {"sources": np.float32, "cover": np.bool_, "fused": np.float32}


class StagedVolumes:
    """K sources, their coverage masks and the fused output of one fixed grid, in a folder.

    Create with :meth:`create` (empty files of the right size) or open an
    existing folder with :meth:`open`. Instances hold no file handles and no
    pixels, so they pickle cheaply to Dask workers.

    Parameters
    ----------
    folder : path
    shape : (K, Z, Y, X)
    offsets : dict of str to int
        Where each file's data start (after its ``.npy`` header).
    """

    def __init__(self, folder: str | os.PathLike, shape: tuple[int, int, int, int], offsets: dict[str, int]):
        self.folder = Path(folder)
        self.shape = tuple(int(n) for n in shape)
        self.offsets = dict(offsets)

    @property
    def k(self) -> int:
        """Number of sources."""
        return self.shape[0]

    @property
    def zyx(self) -> tuple[int, int, int]:
        """Shape of one volume on the fixed grid."""
        return self.shape[1:]

    @classmethod
    def create(cls, folder: str | os.PathLike, k: int, zyx: tuple[int, int, int]) -> "StagedVolumes":
        """Empty (all-zero, sparse) files for *k* sources of shape *zyx* in an existing *folder*.

        Raises
        ------
        WriteError
            The disk has not room for the files (checked first: writing into
            a file on a full disk would fail half-way through the fusion).
        """
        folder = Path(folder)
        shape = (int(k), *(int(n) for n in zyx))
        voxels = int(np.prod(shape[1:]))
        files = shape[0] * voxels * 5 + voxels * 4  # float32 + bool per source, float32 output
        needed = files + (files >> 3)  # and an eighth more for what is written beside them (the outputs)
        free = shutil.disk_usage(folder).free
        if free < needed:
            raise WriteError(f"not enough disk space in {folder.parent} for the fusion's temporary files: "
                             f"{-(-needed // 2**20)} MB needed, {free // 2**20} MB free")
        offsets = {}
        try:
            for name, dtype in _FILES.items():
                file_shape = shape if name != "fused" else shape[1:]
                with open(folder / f"{name}.npy", "wb") as handle:
                    write_array_header_1_0(handle, {"descr": dtype_to_descr(np.dtype(dtype)),
                                                    "fortran_order": False, "shape": file_shape})
                    offsets[name] = handle.tell()
                    handle.truncate(offsets[name] + int(np.prod(file_shape)) * np.dtype(dtype).itemsize)
        except OSError as exc:
            raise WriteError(f"could not create the temporary fusion files in {folder}: {os_error_reason(exc)}") from exc
        return cls(folder, shape, offsets)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "StagedVolumes":
        """The staged volumes of a folder filled by :meth:`create` (e.g. in a worker process)."""
        folder = Path(folder)
        offsets, shape = {}, None
        for name in _FILES:
            try:
                with open(folder / f"{name}.npy", "rb") as handle:
                    read_magic(handle)
                    file_shape, _, _ = read_array_header_1_0(handle)
                    offsets[name] = handle.tell()
            except (OSError, ValueError) as exc:  # ValueError: not a .npy header
                raise FusionError(f"could not read the temporary fusion file {folder / f'{name}.npy'}: "
                                  f"{os_error_reason(exc)}") from exc
            if name == "sources":
                shape = file_shape
        return cls(folder, shape, offsets)

    # --- writing -------------------------------------------------------------

    def write_source(self, k: int, start: int, values: np.ndarray) -> None:
        """Slices ``start:start + n`` of source *k*: *values* (n, Y, X), stored as float32."""
        self._write("sources", k, start, values)

    def write_cover(self, k: int, start: int, covered: np.ndarray) -> None:
        """Slices ``start:start + n`` of source *k*'s coverage mask: *covered* (n, Y, X), stored as bool."""
        self._write("cover", k, start, covered)

    def write_fused(self, start: int, values: np.ndarray) -> None:
        """Slices ``start:start + n`` of the output: *values* (n, Y, X), stored as float32."""
        self._write("fused", None, start, values)

    # --- reading -------------------------------------------------------------

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Slices ``start:stop`` of every source and mask: (K, n, Y, X) float32 and (K, n, Y, X) bool."""
        stack = np.empty((self.k, stop - start, *self.zyx[1:]), np.float32)
        cover = np.empty(stack.shape, bool)
        for k in range(self.k):
            self._read_into("sources", k, start, stack[k])
            self._read_into("cover", k, start, cover[k])
        return stack, cover

    def read_fused(self, start: int, stop: int) -> np.ndarray:
        """Slices ``start:stop`` of the output: (n, Y, X) float32."""
        out = np.empty((stop - start, *self.zyx[1:]), np.float32)
        self._read_into("fused", None, start, out)
        return out

    def source(self, k: int) -> np.ndarray:
        """Source *k* as a read-only memory map (Z, Y, X) float32 (for whole-volume views such as the report)."""
        return np.load(self.folder / "sources.npy", mmap_mode="r")[k]

    def cover(self, k: int) -> np.ndarray:
        """Source *k*'s coverage mask as a read-only memory map (Z, Y, X) bool."""
        return np.load(self.folder / "cover.npy", mmap_mode="r")[k]

    def fused(self) -> np.ndarray:
        """The output as a read-only memory map (Z, Y, X) float32."""
        return np.load(self.folder / "fused.npy", mmap_mode="r")

    def fused_slices(self) -> "StagedSlices":
        """The output as a sequence of Z (Y, X) float32 slices, each read from the file when indexed.

        For writers that go slice by slice: unlike a memory map, what they
        have read does not stay in this process's resident memory.
        """
        return StagedSlices(self)

    # --- internals -----------------------------------------------------------

    def _position(self, name: str, k: int | None, start: int) -> int:
        dtype = np.dtype(_FILES[name])
        plane = int(np.prod(self.zyx[1:])) * dtype.itemsize
        volume = self.zyx[0] * plane
        return self.offsets[name] + (k or 0) * volume + start * plane

    def _check_range(self, k: int | None, start: int, slices: int, plane_shape: tuple[int, ...]) -> None:
        if plane_shape != self.zyx[1:] or start < 0 or start + slices > self.zyx[0]:
            raise InputError(f"slices {start}:{start + slices} of shape {plane_shape} do not fit the staged "
                             f"volumes of shape {self.zyx}")
        if k is not None and not 0 <= k < self.k:
            raise InputError(f"source {k} out of range: {self.k} sources are staged")

    def _write(self, name: str, k: int | None, start: int, values: np.ndarray) -> None:
        self._transfer(name, k, start, np.ascontiguousarray(values, dtype=_FILES[name]), write=True)

    def _read_into(self, name: str, k: int | None, start: int, out: np.ndarray) -> None:
        self._transfer(name, k, start, out, write=False)

    def _transfer(self, name: str, k: int | None, start: int, array: np.ndarray, *, write: bool) -> None:
        """Write *array* to, or read it from, slices ``start:`` of source *k* in file *name* (positioned I/O)."""
        self._check_range(k, start, array.shape[0], array.shape[1:])
        view = memoryview(array).cast("B")
        position = self._position(name, k, start)
        path = self.folder / f"{name}.npy"
        fd = os.open(path, os.O_WRONLY if write else os.O_RDONLY)
        try:
            while view:
                done = os.pwrite(fd, view, position) if write else os.preadv(fd, [view], position)
                if done == 0:
                    raise FusionError(f"{path} is shorter than its header says")
                view, position = view[done:], position + done
        except OSError as exc:  # e.g. a full disk: an output-location problem when writing (exit code 6)
            error = WriteError if write else FusionError
            raise error(f"could not {'write' if write else 'read'} the temporary fusion file {path}: "
                        f"{os_error_reason(exc)}") from exc
        finally:
            os.close(fd)


def stage_on_grid(
    folder: str | os.PathLike,
    fixed: Volume,
    moving: Sequence[tuple[Volume, sitk.Transform]],
    mappings: Sequence[IntensityMapping],
    *,
    slab_slices: int = STAGE_SLAB_SLICES,
) -> StagedVolumes:
    """Stage the fixed volume and every moving volume, resampled onto the fixed grid, mapped to [0, 1].

    Parameters
    ----------
    folder : path
        An existing, empty folder (e.g. from :func:`tempfile.mkdtemp`).
    fixed : Volume
        Source 0; its grid is the output grid. Covers everywhere.
    moving : sequence of (Volume, SimpleITK.Transform)
        Sources 1..K-1 with their fixed-to-moving transforms (from
        :func:`medfuse.volume.registration.register`). Linear interpolation;
        outside its field of view a source reads as its minimum and is not
        covered (as :func:`medfuse.volume.resampling.resample_onto`).
    mappings : sequence of IntensityMapping
        One per source (fixed first): scanner units to [0, 1].
    slab_slices : int
        Fixed slices resampled and written at a time.

    Returns
    -------
    StagedVolumes
        With sources and coverage filled; the output file is all zeros.
    """
    if len(mappings) != len(moving) + 1:
        raise InputError(f"got {len(mappings)} intensity mappings for {len(moving) + 1} volumes")
    x, y, z = fixed.image.GetSize()
    staged = StagedVolumes.create(folder, len(moving) + 1, (z, y, x))
    fixed_values = sitk.GetArrayViewFromImage(fixed.image)
    everywhere = np.ones((min(slab_slices, z), y, x), bool)
    for start in range(0, z, slab_slices):
        stop = min(start + slab_slices, z)
        staged.write_source(0, start, mappings[0].apply(fixed_values[start:stop]))
        staged.write_cover(0, start, everywhere[:stop - start])
    for k, (volume, transform) in enumerate(moving, start=1):
        for start, _, values, coverage in resample_slabs(fixed.image, volume, transform, slab_slices):
            staged.write_source(k, start, mappings[k].apply(values))
            staged.write_cover(k, start, coverage)
    return staged


class StagedSlices(Sequence):
    """The staged output, slice by slice (``len``, ``[z]``, iteration); see :meth:`StagedVolumes.fused_slices`."""

    def __init__(self, staged: StagedVolumes):
        self.staged = staged

    def __len__(self) -> int:
        return self.staged.zyx[0]

    def __getitem__(self, z: int) -> np.ndarray:
        if not isinstance(z, (int, np.integer)):
            raise TypeError("staged slices are indexed one slice at a time")
        z = int(z) + len(self) if z < 0 else int(z)
        if not 0 <= z < len(self):
            raise IndexError(f"slice {z} out of range for {len(self)} slices")
        return self.staged.read_fused(z, z + 1)[0]
