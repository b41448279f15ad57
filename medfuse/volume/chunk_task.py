"""The unit of slice-wise fusion: a chunk of consecutive slices, its bounds and its fusion.

Shared by every executor (in-process, local Dask workers, an external
scheduler) so that each fuses exactly the same chunks the same way; the
rules are documented in :mod:`medfuse.volume.dispatch`.
"""

from __future__ import annotations

import numpy as np

from medfuse.core.config import FusionConfig
from medfuse.core.fusion import fuse_slices

__all__ = ["CHUNK_PIXELS", "EMPTY_SLICE_LEVEL", "MAX_CHUNK_SLICES", "chunk_bounds", "fuse_chunk", "taking_part"]

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
            covered = stack[source, index][cover[source, index]]
            members[source, index] = covered.size > 0 and np.percentile(covered, 99.5) >= EMPTY_SLICE_LEVEL
    return members


def fuse_chunk(stack: np.ndarray, cover: np.ndarray, config: FusionConfig,
               histograms: np.ndarray | None) -> np.ndarray:
    """Fuse one chunk under the slices-without-data rule (the task each worker runs).

    Parameters
    ----------
    stack : ndarray (K, n, Y, X) float32 in [0, 1]
    cover : ndarray (K, n, Y, X) bool
        Where each source has data.
    config : FusionConfig
    histograms : ndarray (K, levels) or None
        Volume-wide histograms, or None for per-slice saliency.

    Returns
    -------
    ndarray (n, Y, X) float32
    """
    n = stack.shape[1]
    members_of = taking_part(stack, cover)
    out = np.zeros(stack.shape[1:], np.float32)
    groups: dict[tuple[int, ...], list[int]] = {}
    for index in range(n):
        groups.setdefault(tuple(np.flatnonzero(members_of[:, index])), []).append(index)
    for members, slices in sorted(groups.items()):
        if len(members) == 0:
            continue
        part = stack[list(members)][:, slices]
        part_cover = cover[list(members)][:, slices]
        if len(members) == 1:
            out[slices] = np.where(part_cover[0], part[0], 0.0)
            continue
        extractor = _extractor(config)
        hist = histograms[list(members)] if histograms is not None else None
        result = fuse_slices(part, config, extractor, saliency_histograms=hist)
        # Voxels that only one source covers take that source's value; none: 0.
        count = part_cover.sum(axis=0)
        only = np.argmax(part_cover, axis=0)
        single = np.take_along_axis(part, only[None], axis=0)[0]
        result = np.where(count >= 2, result, np.where(count == 1, single, 0.0))
        out[slices] = result
    return out


def _extractor(config: FusionConfig):
    if config.detail_rule != "cnn":
        return None
    from medfuse.features.registry import load_extractor  # cached per process by the registry

    return load_extractor(config.model, config.depth, threads=1)
