"""The unit of slice-wise fusion: a chunk of consecutive slices, its bounds and its fusion.

Shared by every executor (in-process, local Dask workers, an external
scheduler) so that each fuses exactly the same chunks the same way; the
rules are documented in :mod:`medfuse.volume.dispatch`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medfuse.core.config import FusionConfig
from medfuse.core.fusion import fuse_slices, fuse_stack

__all__ = ["CHUNK_PIXELS", "EMPTY_SLICE_LEVEL", "MAX_CHUNK_SLICES", "WeightPlanes", "chunk_bounds", "fuse_chunk",
           "taking_part"]

#: A source's slice counts as empty air below this 99.5th percentile (fusion range [0, 1]).
EMPTY_SLICE_LEVEL = 0.02
#: Source pixels per chunk by default (one slice of two 512 x 512 sources).
CHUNK_PIXELS = 2 * 512 * 512
#: Most slices in one default chunk.
MAX_CHUNK_SLICES = 16


def chunk_bounds(shape: tuple[int, ...], chunk_slices: int | None) -> list[tuple[int, int]]:
    """Slice ranges of the chunks for (K, Z, Y, X) sources (see module doc: depends only on the shape)."""
    k, z = shape[0], shape[1]
    plane = int(np.prod(shape[2:]))
    if chunk_slices is None:
        chunk_slices = min(MAX_CHUNK_SLICES, max(1, CHUNK_PIXELS // (k * plane)))
    return [(start, min(start + chunk_slices, z)) for start in range(0, z, chunk_slices)]


def taking_part(stack: np.ndarray, cover: np.ndarray) -> np.ndarray:
    """Which sources take part in each slice (the slices-without-data rule, see :mod:`medfuse.volume.dispatch`).

    Parameters
    ----------
    stack : ndarray (K, n, Y, X) float32 in [0, 1]
    cover : ndarray (K, n, Y, X) bool

    Returns
    -------
    ndarray (K, n) bool
        True where source k covers some voxel of slice i and is not empty
        air there (99.5th percentile of its covered voxels >= :data:`EMPTY_SLICE_LEVEL`).
    """
    k, n = stack.shape[:2]
    members = np.zeros((k, n), bool)
    for source in range(k):
        for index in range(n):
            members[source, index] = _percentile_reaches(stack[source, index], cover[source, index], 99.5,
                                                         EMPTY_SLICE_LEVEL)
    return members


def _percentile_reaches(image: np.ndarray, where: np.ndarray, q: float, level: float) -> bool:
    """``np.percentile(image[where], q) >= level``, mostly without sorting or copying.

    With c of the m selected values at or above *level*, the sorted values
    reach it from position m - c on. numpy's percentile interpolates between
    positions floor(p) and ceil(p), p = q/100 (m - 1), and the interpolation
    lies between those two values, so the answer is known from c alone unless
    position m - c is ceil(p) and floor(p) lies below it: that case alone is
    left to ``np.percentile``.
    """
    count = int(np.count_nonzero(where))
    if count == 0:
        return False
    reaching = int(np.count_nonzero((image >= level) & where))
    first = count - reaching  # first sorted position at or above the level
    position = q / 100.0 * (count - 1)
    below, above = int(np.floor(position)), int(np.ceil(position))
    if first <= below:
        return True
    if first > above:
        return False
    return bool(np.percentile(image[where], q) >= level)


def fuse_chunk(stack: np.ndarray, cover: np.ndarray, config: FusionConfig,
               histograms: np.ndarray | None, cuts_for: tuple[int, int] | None = None):
    """Fuse one chunk under the slices-without-data rule (the task each worker runs).

    Parameters
    ----------
    stack : ndarray (K, n, Y, X) float32 in [0, 1]
    cover : ndarray (K, n, Y, X) bool
        Where each source has data.
    config : FusionConfig
    histograms : ndarray (K, levels) or None
        Volume-wide histograms, or None for per-slice saliency.
    cuts_for : (start, Z), optional
        The chunk's first slice and the volume's slice count: also return the
        weights the fusion used on the volume's three mid planes (a dict
        for :meth:`WeightPlanes.store`), for the QC report. The slices are then
        fused one by one (the fusion returns one slice's weights), with the
        same pixels as the batched call.

    Returns
    -------
    ndarray (n, Y, X) float32
        The fused slices; with ``cuts_for``, ``(fused, cuts)``.
    """
    n = stack.shape[1]
    members_of = taking_part(stack, cover)
    out = np.zeros(stack.shape[1:], np.float32)
    # The base and detail weights on the volume's mid planes, kept only when the report asks for them.
    cuts = _MidPlaneCuts(stack.shape, *cuts_for) if cuts_for is not None else None
    groups: dict[tuple[int, ...], list[int]] = {}
    for index in range(n):
        groups.setdefault(tuple(np.flatnonzero(members_of[:, index])), []).append(index)
    for members, slices in sorted(groups.items()):
        if len(members) == 0:
            continue
        part = stack[list(members)][:, slices]
        part_cover = cover[list(members)][:, slices]
        # Usually every taking-part source covers the whole slice: then no voxel
        # needs the one-source rule below, and its per-voxel work is skipped.
        everywhere = len(members) >= 2 and bool(part_cover.all())
        count = part_cover.sum(axis=0) if not everywhere else None
        if cuts is not None and not everywhere:
            only = np.argmax(part_cover, axis=0)
            # Where one taking-part source alone covers a voxel its weight is 1 (the fused value is its own).
            single = ((np.arange(len(members))[:, None, None, None] == only[None]) & (count == 1)).astype(np.float32)
            for position, index in enumerate(slices):
                for kind in range(2):
                    cuts.put(kind, members, index, single[:, position])
        if len(members) == 1:
            out[slices] = np.where(part_cover[0], part[0], 0.0)
            continue
        extractor = _extractor(config)
        hist = histograms[list(members)] if histograms is not None else None
        if cuts is None:
            result = fuse_slices(part, config, extractor, saliency_histograms=hist)
        else:
            result = np.empty(part.shape[1:], np.float32)
            for position, index in enumerate(slices):
                fused = fuse_stack(part[:, position], config, extractor, saliency_histograms=hist)
                result[position] = fused.fused
                both = None if everywhere else count[position] >= 2
                for kind, plane in enumerate((fused.base_weights, fused.detail_weights)):
                    cuts.put(kind, members, index, plane, where=both, clip=kind == 1)
        if not everywhere:
            # Voxels that only one source covers take that source's value; none: 0.
            alone = np.zeros(result.shape, np.float32)
            for source in range(len(members)):
                np.copyto(alone, part[source], where=part_cover[source])
            np.copyto(alone, result, where=count >= 2)
            result = alone
        out[slices] = result
    if cuts is None:
        return out
    return out, cuts.planes


class _MidPlaneCuts:
    """A chunk's weights on the volume's three mid planes, filled slice by slice.

    ``planes`` is what :meth:`WeightPlanes.store` takes: ``axial`` (2, K, Y, X)
    when the chunk holds slice Z // 2 (else None), ``coronal`` (2, K, n, X)
    (row Y // 2 of each slice), ``sagittal`` (2, K, n, Y) (column X // 2).
    Only those lines are copied from each slice's weights, never a whole
    (2, K, n, Y, X) block.
    """

    def __init__(self, shape: tuple[int, ...], start: int, z_size: int) -> None:
        k, n, y, x = shape
        self.start, self.middle, self.row, self.column = start, z_size // 2, y // 2, x // 2
        axial = np.zeros((2, k, y, x), np.float32) if start <= self.middle < start + n else None
        self.planes = {"axial": axial, "coronal": np.zeros((2, k, n, x), np.float32),
                       "sagittal": np.zeros((2, k, n, y), np.float32)}

    def put(self, kind: int, members: tuple[int, ...], index: int, plane: np.ndarray,
            where: np.ndarray | None = None, clip: bool = False) -> None:
        """Set the weights of *members* on slice *index* of the chunk from *plane* (len(members), Y, X).

        With *where* (Y, X) bool, only there (the rest keeps what was put before);
        *clip* clips to [0, 1] (detail weights, for display).
        """
        members = list(members)
        on_line = (kind, members, index)
        parts = [("coronal", on_line, np.s_[:, self.row, :], np.s_[self.row, :]),
                 ("sagittal", on_line, np.s_[:, :, self.column], np.s_[:, self.column])]
        if self.start + index == self.middle:
            parts.append(("axial", (kind, members), np.s_[:], np.s_[:]))
        for name, target, of_plane, of_where in parts:
            values = np.clip(plane[of_plane], 0.0, 1.0) if clip else plane[of_plane]
            if where is not None:
                values = np.where(where[of_where], values, self.planes[name][target])
            self.planes[name][target] = values


class WeightPlanes:
    """The base and detail weights a volume was fused with, on its three mid planes.

    Filled chunk by chunk during the fusion (:func:`fuse_chunk` with
    ``cuts_for``) so that the QC report need not fuse the volume again:
    ``axial`` (2, K, Y, X) is slice Z // 2; ``coronal`` (2, K, Z, X) stacks
    row Y // 2 of every slice, ``sagittal`` (2, K, Z, Y) column X // 2.
    Index 0 holds base weights, 1 detail weights (clipped to [0, 1] for
    display). A source that does not take part in a slice has weight 0 there;
    a voxel covered by one taking-part source only has weight 1 for it.

    Parameters
    ----------
    k, zyx
        Number of sources and the grid's (Z, Y, X).
    folder : path, optional
        Keep the planes in ``.npy`` files there (created), so that worker
        processes can write their chunks' rows (:meth:`open`); default: in memory.
    """

    NAMES = ("axial", "coronal", "sagittal")

    def __init__(self, k: int, zyx: tuple[int, int, int], folder: str | os.PathLike | None = None) -> None:
        z, y, x = zyx
        shapes = {"axial": (2, k, y, x), "coronal": (2, k, z, x), "sagittal": (2, k, z, y)}
        self.folder = None if folder is None else Path(folder)
        if self.folder is None:
            self.planes = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        else:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.planes = {name: np.lib.format.open_memmap(self.folder / f"{name}.npy", mode="w+", dtype=np.float32,
                                                           shape=shape) for name, shape in shapes.items()}

    @classmethod
    def open(cls, folder: str | os.PathLike) -> WeightPlanes:
        """The planes kept in *folder* by another process, for writing."""
        planes = cls.__new__(cls)
        planes.folder = Path(folder)
        planes.planes = {name: np.load(planes.folder / f"{name}.npy", mmap_mode="r+") for name in cls.NAMES}
        return planes

    def store(self, start: int, cuts: dict[str, np.ndarray | None]) -> None:
        """Write a chunk's mid-plane cuts (:func:`fuse_chunk` with ``cuts_for``; its slices from *start*)."""
        if cuts["axial"] is not None:
            self.planes["axial"][...] = cuts["axial"]
        for name in ("coronal", "sagittal"):
            self.planes[name][:, :, start:start + cuts[name].shape[2]] = cuts[name]
        if self.folder is not None:
            for plane in self.planes.values():
                plane.flush()

    def arrays(self) -> dict[str, np.ndarray]:
        """The three planes as in-memory arrays."""
        return {name: np.array(plane) for name, plane in self.planes.items()}


def _extractor(config: FusionConfig):
    if not config.uses_cnn:
        return None
    from medfuse.features.registry import load_extractor  # session and parsed manifests cached per process

    return load_extractor(config.model, config.depth, threads=1)
