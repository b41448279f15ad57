"""Compiled (numba) kernels of the fusion core's hot loops.

What is compiled and why: the box mean, the guided filter and the Gaussian
blur (:mod:`medfuse.core.filters` calls them), and the saliency table
look-up (:mod:`medfuse.core.saliency`). In NumPy a guided filter is six box
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
test oracle: :mod:`medfuse.core.kernels_reference`.

JIT cost: kernels compile on their first call for each argument type and
are cached on disk (numba ``cache=True``), so only the first process ever
pays the compilation; where the cache lives, and the fallback where it
cannot be written (kernels compiled in memory in every process, same
results), is :mod:`medfuse.core.kernels_cache`. Numba itself is imported by
the first kernel call (:mod:`medfuse.core.kernels_compiled`), so importing
medfuse costs neither its import time nor its memory.
"""

from __future__ import annotations

from medfuse.core.kernels_cache import CACHE_DIR

__all__ = ["CACHE_DIR", "box_mean_images", "guided_images", "gaussian_images", "histogram_images", "lookup_images"]


def _compiled():
    """The numba kernels module, imported (with numba) on the first call of any kernel."""
    from medfuse.core import kernels_compiled

    return kernels_compiled


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
