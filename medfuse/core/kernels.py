"""Compiled (numba) kernels of the fusion core's hot loops.

What is compiled and why: the box mean, the guided filter and the Gaussian
blur (:mod:`medfuse.core.filters` calls them), the saliency table
look-up (:mod:`medfuse.core.saliency`), and the pyramid rule's decision and
blending (:mod:`medfuse.core.weights`, :mod:`medfuse.core.pyramid`; kernels in
:mod:`medfuse.core.kernels_pyramid`, which says how they are organised). In NumPy a guided filter is six box
means and about ten element-wise passes, each streaming a float64 temporary
through memory; here it is two passes over the image: the first slides the
window sums of I, p, I·p and I² down the rows (one vectorised add and
subtract per row) and across each row (prefix sums), and turns them into the
coefficients a, b at once; the second box-averages a and b and writes
q = mean(a)·I + mean(b). All window sums and the guided filter's arithmetic
are float64 (ε = 1e-6 needs it, see :mod:`medfuse.core.kernels_reference`);
images are read and results written in their own dtype (float32 in the
fusion). Kernels release the GIL (``nogil``), so the fusion's ``threads``
really run in parallel, and each image is computed by the same operations
whatever thread runs it (byte-identical output for any thread count).

The NumPy implementation they replaced is kept as the readable reference and
test oracle: :mod:`medfuse.core.kernels_reference` (for the pyramid rule: the
NumPy functions of :mod:`medfuse.core.pyramid` and :mod:`medfuse.core.weights`
it calls).

The pyramid rule's kernels work on row ranges of one slice; :func:`split_work`
and :func:`run_pieces` share such ranges between threads. Every pixel is
computed by the same operations whatever the split, so the output does not
depend on the number of threads.

JIT cost: kernels compile on their first call for each argument type and
are cached on disk (numba ``cache=True``), so only the first process ever
pays the compilation; where the cache lives, and the fallback where it
cannot be written (kernels compiled in memory in every process, same
results), is :mod:`medfuse.core.kernels_cache`. Numba itself is imported by
the first kernel call (:mod:`medfuse.core.kernels_compiled`), so importing
medfuse costs neither its import time nor its memory.
"""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Callable

from medfuse.core.kernels_cache import CACHE_DIR

__all__ = [
    "CACHE_DIR",
    "box_mean_images",
    "guided_images",
    "gaussian_images",
    "histogram_images",
    "lookup_images",
    "decide_rows",
    "reduce_finest_rows",
    "blend_coarse",
    "blend_finest_rows",
    "split_work",
    "run_pieces",
]


def _compiled():
    """The numba kernels module, imported (with numba) on the first call of any kernel."""
    from medfuse.core import kernels_compiled

    return kernels_compiled


def _pyramid():
    """The pyramid rule's numba kernels module, imported (with numba) on the first call of one of them."""
    from medfuse.core import kernels_pyramid

    return kernels_pyramid


def box_mean_images(images, radius, out):
    """Window means of (n, H, W) images into ``out`` (n, H, W), not overlapping ``images``; see
    :func:`medfuse.core.kernels_compiled.box_mean_images`."""
    _compiled().box_mean_images(images, radius, out)


def guided_images(guide, src, radius, eps, out):
    """Guided filter of (n, H, W) ``src`` by ``guide`` into ``out``; see
    :func:`medfuse.core.kernels_compiled.guided_images`."""
    _compiled().guided_images(guide, src, radius, eps, out)


def gaussian_images(images, kernel, radius, out):
    """Normalised separable correlation of (n, H, W) images with ``kernel``; see
    :func:`medfuse.core.kernels_compiled.gaussian_images`."""
    _compiled().gaussian_images(images, kernel, radius, out)


def histogram_images(images, levels, counts):
    """Add the quantised-level counts of (n, P) images to ``counts`` (n, levels); see
    :func:`medfuse.core.kernels_compiled.histogram_images`."""
    _compiled().histogram_images(images, levels, counts)


def lookup_images(images, levels, tables, out):
    """Saliency table look-up of (n, P) images into ``out``; see
    :func:`medfuse.core.kernels_compiled.lookup_images`."""
    _compiled().lookup_images(images, levels, tables, out)


def decide_rows(sources, cells, stride, radius, n, row_start, row_stop, chosen):
    """The deciding source of each pixel of rows [row_start, row_stop) of slice n; see
    :func:`medfuse.core.kernels_pyramid.decide_rows`."""
    _pyramid().decide_rows(sources, cells, stride, radius, n, row_start, row_stop, chosen)


def reduce_finest_rows(sources, chosen, n, row_start, row_stop, gauss, weights):
    """Level 1 of the sources' and the one-hot maps' Gaussian pyramids, some rows of slice n; see
    :func:`medfuse.core.kernels_pyramid.reduce_finest_rows`."""
    _pyramid().reduce_finest_rows(sources, chosen, n, row_start, row_stop, gauss, weights)


def blend_coarse(gauss, weights, n, levels, coarsest_max, collapsed, coarse_weights, weights_level1):
    """Pyramid levels 1 … L−1 of slice n, blended and collapsed into level 1; see
    :func:`medfuse.core.kernels_pyramid.blend_coarse`."""
    _pyramid().blend_coarse(gauss, weights, n, levels, coarsest_max, collapsed, coarse_weights, weights_level1)


def blend_finest_rows(sources, chosen, gauss, collapsed, weights_level1, n, row_start, row_stop, envelope, fused,
                      base_weights):
    """Fused rows of slice n (finest band, collapse, clip), and optionally the base weights; see
    :func:`medfuse.core.kernels_pyramid.blend_finest_rows`."""
    _pyramid().blend_finest_rows(sources, chosen, gauss, collapsed, weights_level1, n, row_start, row_stop,
                                 envelope, fused, base_weights)


def split_work(slices: int, rows: int, parts: int) -> list[list[tuple[int, int, int]]]:
    """Share ``slices`` x ``rows`` units of work (rows of every slice, slice by slice) into ``parts`` groups.

    Returns
    -------
    list of list of (slice, row start, row stop)
        At most ``parts`` groups of consecutive units, equal to within one
        unit; a group may span several slices (one piece per slice).

    Examples
    --------
    >>> split_work(3, 4, 2)
    [[(0, 0, 4), (1, 0, 2)], [(1, 2, 4), (2, 0, 4)]]
    """
    total = slices * rows
    bounds = [round(total * part / parts) for part in range(parts + 1)]
    groups = []
    for start, stop in zip(bounds[:-1], bounds[1:]):
        pieces = []
        while start < stop:
            slice_index, row = divmod(start, rows)
            end = min(stop, (slice_index + 1) * rows)
            pieces.append((slice_index, row, end - slice_index * rows))
            start = end
        if pieces:
            groups.append(pieces)
    return groups


def run_pieces(kernel: Callable[[int, int, int], None], groups: list[list[tuple[int, int, int]]],
               executor: Executor | None) -> None:
    """Call ``kernel(slice, row start, row stop)`` for every piece: the first group in the calling thread, the
    others as tasks of ``executor`` (the caller works instead of waiting for a woken thread).

    Without an executor, everything runs in the calling thread.
    """

    def run_group(pieces: list[tuple[int, int, int]]) -> None:
        for piece in pieces:
            kernel(*piece)

    if executor is None:
        for pieces in groups:
            run_group(pieces)
        return
    others = [executor.submit(run_group, pieces) for pieces in groups[1:]]
    run_group(groups[0])
    for task in others:
        task.result()
