"""LC histogram saliency (Zhai & Shah 2006), as used for the base weights.

For an image quantised to L grey levels with histogram M, the saliency of a
pixel of level v is ``S(v) = Σ_i M(i)·|v − i|`` (paper eqs. 3–4): the summed
grey-level distance to every pixel of the image. It depends only on v, so it
is a table of L entries looked up per pixel: O(N + L²) for the whole image.

Volume-wide saliency: pass one histogram per source computed over the whole
volume (:func:`level_histogram`) so that every slice is weighted by the same
table, instead of each slice's own histogram.
"""

from __future__ import annotations

import numpy as np

from medfuse.core import kernels

__all__ = ["quantise", "level_histogram", "saliency_table", "saliency_maps"]


def quantise(images: np.ndarray, levels: int = 256) -> np.ndarray:
    """Quantise [0, 1] images to integer levels ``round(x · (levels − 1))``.

    Parameters
    ----------
    images : ndarray, any shape, float in [0, 1]
    levels : int, 2..65536

    Returns
    -------
    ndarray, same shape, uint8 when levels <= 256 else uint16
    """
    dtype = np.uint8 if levels <= 256 else np.uint16
    scaled = np.multiply(images, levels - 1, dtype=np.float32)
    np.clip(scaled, 0, levels - 1, out=scaled)
    return np.rint(scaled, out=scaled).astype(dtype)


def level_histogram(images: np.ndarray, levels: int = 256) -> np.ndarray:
    """Histogram of the quantised levels of [0, 1] data (one source, any shape).

    Parameters
    ----------
    images : ndarray, any shape, float in [0, 1]
        E.g. a whole (Z, H, W) volume of one source, for volume-wide saliency.
    levels : int

    Returns
    -------
    ndarray, shape (levels,), int64
        Pixel count per level.
    """
    return np.bincount(quantise(images, levels).ravel(), minlength=levels).astype(np.int64)


def saliency_table(histograms: np.ndarray, normalisation: str = "minmax") -> np.ndarray:
    """Saliency of every grey level given histograms.

    Parameters
    ----------
    histograms : ndarray, shape (..., L), non-negative counts
    normalisation : {'minmax', 'none'}
        'minmax': scale each table to [0, 1] over the levels that occur in its
        histogram (so the per-pixel map spans exactly [0, 1]); a histogram with
        a single occupied level (a flat image) gives an all-zero table.
        'none': ``S(v) = Σ_i p(i)·|v − i|`` with p the histogram divided by its
        total (mean absolute level difference, as in the authors' code).

    Returns
    -------
    ndarray, shape (..., L), float64
    """
    hist = np.asarray(histograms, dtype=np.float64)
    levels = hist.shape[-1]
    grid = np.arange(levels, dtype=np.float64)
    distance = np.abs(grid[:, None] - grid[None, :])  # (L, L), D(v, i) = |v - i|
    totals = hist.sum(axis=-1, keepdims=True)
    prob = hist / np.where(totals > 0, totals, 1.0)
    table = prob @ distance  # (..., L)
    if normalisation == "none":
        return table
    if normalisation != "minmax":
        raise ValueError(f"unknown saliency normalisation {normalisation!r}")
    present = hist > 0
    low = np.where(present, table, np.inf).min(axis=-1, keepdims=True)
    high = np.where(present, table, -np.inf).max(axis=-1, keepdims=True)
    span = high - low
    flat = ~(span > 0)  # also True for an empty histogram (inf - inf)
    scaled = (table - np.where(flat, 0.0, low)) / np.where(flat, 1.0, span)
    scaled = np.where(flat, 0.0, scaled)
    return np.clip(scaled, 0.0, 1.0)


def saliency_maps(
    images: np.ndarray,
    levels: int = 256,
    normalisation: str = "minmax",
    histograms: np.ndarray | None = None,
) -> np.ndarray:
    """Per-pixel LC saliency of a stack of images.

    Parameters
    ----------
    images : ndarray, shape (K, N, H, W), float in [0, 1]
        K sources, N images (slices) each.
    levels : int
        Quantisation levels (256 = the paper's 8-bit).
    normalisation : {'minmax', 'none'}
        See :func:`saliency_table`.
    histograms : ndarray, shape (K, levels), optional
        One histogram per source used for all its N images (volume-wide
        saliency). Default: each image's own histogram.

    Returns
    -------
    ndarray, shape (K, N, H, W), float32
    """
    k, n, h, w = images.shape
    flat = np.ascontiguousarray(images, dtype=np.float32).reshape(k * n, h * w)
    if histograms is None:
        hist = np.zeros((k * n, levels), np.int64)
        kernels.histogram_images(flat, levels, hist)
        table = saliency_table(hist, normalisation)
    else:
        hist = np.asarray(histograms)
        if hist.shape != (k, levels):
            raise ValueError(f"saliency histograms must have shape {(k, levels)}, got {hist.shape}")
        if np.any(hist < 0) or not np.all(np.isfinite(hist)):
            raise ValueError("saliency histograms must be finite, non-negative counts")
        table = np.repeat(saliency_table(hist, normalisation), n, axis=0)
    maps = np.empty((k * n, h * w), np.float32)
    # Quantisation and table look-up fused in one compiled pass per image (same levels as quantise()).
    kernels.lookup_images(flat, levels, np.ascontiguousarray(table, dtype=np.float32), maps)
    return maps.reshape(k, n, h, w)
