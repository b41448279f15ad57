"""The numba kernels themselves; imported on the first kernel call by :mod:`medfuse.core.kernels`.

Kept apart so that importing medfuse does not import numba (about 0.2 s and 50 MB) and so that numba
starts only when something is fused: see :mod:`medfuse.core.kernels` for what is compiled and why, and
:mod:`medfuse.core.kernels_cache` for where the compiled code is cached (it sets ``NUMBA_CACHE_DIR``
before this module imports numba).
"""

from __future__ import annotations

import numba
import numpy as np

from medfuse.core.kernels_cache import CACHE_DIR

if CACHE_DIR is not None:
    numba.config.CACHE_DIR = CACHE_DIR  # in case numba was imported before medfuse.core.kernels

_jit = numba.njit(nogil=True, cache=CACHE_DIR is not None, error_model="numpy")


@_jit
def _inverse_counts(n, radius):
    """1 / (number of pixels of the window centred at 0..n-1 inside [0, n))."""
    out = np.empty(n, np.float64)
    for j in range(n):
        out[j] = 1.0 / (min(j + radius + 1, n) - max(j - radius, 0))
    return out


@_jit
def _slide_rows(columns, data, i, radius):
    """Move the window sums ``columns`` (C, W) of data (C, H, W) from output row i-1 to row i (i = 0: start)."""
    channels, height, width = data.shape
    if i == 0:
        columns[:] = 0.0
        for row in range(min(radius, height - 1) + 1):
            for c in range(channels):
                for j in range(width):
                    columns[c, j] += data[c, row, j]
        return
    add = i + radius
    drop = i - radius - 1
    for c in range(channels):
        column = columns[c]
        if add < height and drop >= 0:
            entering = data[c, add]
            leaving = data[c, drop]
            for j in range(width):
                column[j] = column[j] + entering[j] - leaving[j]
        elif add < height:
            entering = data[c, add]
            for j in range(width):
                column[j] += entering[j]
        elif drop >= 0:
            leaving = data[c, drop]
            for j in range(width):
                column[j] -= leaving[j]


@_jit
def _extended_prefix(columns, ext, radius):
    """ext[c, t] = sum of columns[c, :clip(t − radius, 0, W)], t = 0..W+2r: window sum at j = ext[j+2r+1] − ext[j].

    The running sums of up to four channels advance in one loop (independent
    add chains: the loop runs at the adder's throughput, not its latency).
    """
    channels, width = columns.shape
    for t in range(radius + 1):
        for c in range(channels):
            ext[c, t] = 0.0
    if channels == 4:
        t0 = t1 = t2 = t3 = 0.0
        for j in range(width):
            t0 += columns[0, j]
            t1 += columns[1, j]
            t2 += columns[2, j]
            t3 += columns[3, j]
            ext[0, radius + 1 + j] = t0
            ext[1, radius + 1 + j] = t1
            ext[2, radius + 1 + j] = t2
            ext[3, radius + 1 + j] = t3
    elif channels == 2:
        t0 = t1 = 0.0
        for j in range(width):
            t0 += columns[0, j]
            t1 += columns[1, j]
            ext[0, radius + 1 + j] = t0
            ext[1, radius + 1 + j] = t1
    else:
        for c in range(channels):
            total = 0.0
            for j in range(width):
                total += columns[c, j]
                ext[c, radius + 1 + j] = total
    for t in range(radius + 1 + width, width + 2 * radius + 1):
        for c in range(channels):
            ext[c, t] = ext[c, radius + width]


@_jit
def box_mean_images(images, radius, out):
    """Window means of (n, H, W) images into ``out`` (n, H, W), which must not overlap ``images``.

    Border rule, precision: as :func:`medfuse.core.filters.box_mean` (cut windows, float64 sums).
    """
    n, height, width = images.shape
    side = 2 * radius + 1
    inv_rows = _inverse_counts(height, radius)
    inv_cols = _inverse_counts(width, radius)
    columns = np.empty((1, width), np.float64)
    ext = np.empty((1, width + side), np.float64)
    low = ext[:, :width]  # window sum at column j: high[:, j] - low[:, j]
    high = ext[:, side:]
    for m in range(n):
        data = images[m:m + 1]
        for i in range(height):
            _slide_rows(columns, data, i, radius)
            _extended_prefix(columns, ext, radius)
            scale = inv_rows[i]
            out_row = out[m, i]
            for j in range(width):
                out_row[j] = (high[0, j] - low[0, j]) * (scale * inv_cols[j])


@_jit
def _slide_guide(columns, guide, src, i, radius):
    """Window sums of I, p, I·p, I² (``columns`` (4, W)) moved from output row i-1 to row i (i = 0: start)."""
    height, width = guide.shape
    if i == 0:
        columns[:] = 0.0
        for row in range(min(radius, height - 1) + 1):
            _add_guide_row(columns, guide[row], src[row], 1.0)
        return
    add = i + radius
    drop = i - radius - 1
    if add < height and drop >= 0:
        guide_in, src_in, guide_out, src_out = guide[add], src[add], guide[drop], src[drop]
        sum_i, sum_p, sum_ip, sum_ii = columns[0], columns[1], columns[2], columns[3]
        for j in range(width):
            x = np.float64(guide_in[j])
            y = np.float64(src_in[j])
            u = np.float64(guide_out[j])
            v = np.float64(src_out[j])
            sum_i[j] = sum_i[j] + x - u
            sum_p[j] = sum_p[j] + y - v
            sum_ip[j] = sum_ip[j] + x * y - u * v
            sum_ii[j] = sum_ii[j] + x * x - u * u
    elif add < height:
        _add_guide_row(columns, guide[add], src[add], 1.0)
    elif drop >= 0:
        _add_guide_row(columns, guide[drop], src[drop], -1.0)


@_jit
def _add_guide_row(columns, guide_row, src_row, sign):
    sum_i, sum_p, sum_ip, sum_ii = columns[0], columns[1], columns[2], columns[3]
    for j in range(guide_row.shape[0]):
        x = np.float64(guide_row[j])
        y = np.float64(src_row[j])
        sum_i[j] += sign * x
        sum_p[j] += sign * y
        sum_ip[j] += sign * (x * y)
        sum_ii[j] += sign * (x * x)


@_jit
def guided_images(guide, src, radius, eps, out):
    """Guided filter of (n, H, W) ``src`` by ``guide`` into ``out`` (n, H, W); float64 arithmetic.

    ``a = cov(I, p) / (var(I) + eps)``, ``b = mean(p) − a·mean(I)``,
    ``q = mean(a)·I + mean(b)`` with cut-window means (see
    :func:`medfuse.core.filters.guided_filter`). ``out`` must not overlap ``src``.
    """
    n, height, width = guide.shape
    side = 2 * radius + 1
    inv_rows = _inverse_counts(height, radius)
    inv_cols = _inverse_counts(width, radius)
    coef = np.empty((2, height, width), np.float64)  # a, b of one image
    columns = np.empty((4, width), np.float64)
    ext = np.empty((4, width + side), np.float64)
    low = ext[:, :width]  # window sums at column j: high[:, j] - low[:, j]
    high = ext[:, side:]
    for m in range(n):
        image = guide[m]
        for i in range(height):
            _slide_guide(columns, image, src[m], i, radius)
            _extended_prefix(columns, ext, radius)
            scale = inv_rows[i]
            a_row = coef[0, i]
            b_row = coef[1, i]
            for j in range(width):
                s = scale * inv_cols[j]
                mean_i = (high[0, j] - low[0, j]) * s
                mean_p = (high[1, j] - low[1, j]) * s
                mean_ip = (high[2, j] - low[2, j]) * s
                mean_ii = (high[3, j] - low[3, j]) * s
                a = (mean_ip - mean_i * mean_p) / (mean_ii - mean_i * mean_i + eps)
                a_row[j] = a
                b_row[j] = mean_p - a * mean_i
        for i in range(height):
            _slide_rows(columns[:2], coef, i, radius)
            _extended_prefix(columns[:2], ext[:2], radius)
            scale = inv_rows[i]
            guide_row = image[i]
            out_row = out[m, i]
            for j in range(width):
                s = scale * inv_cols[j]
                mean_a = (high[0, j] - low[0, j]) * s
                mean_b = (high[1, j] - low[1, j]) * s
                out_row[j] = mean_a * np.float64(guide_row[j]) + mean_b


@_jit
def _correlate_inside(line, kernel, radius, inside, out):
    """out[j] = Σ_t kernel[t]·line[j + t − radius] over taps inside the line, / inside[j]."""
    width = line.shape[0]
    for j in range(width):
        total = 0.0
        for t in range(max(0, radius - j), min(2 * radius + 1, width - j + radius)):
            total += kernel[t] * line[j + t - radius]
        out[j] = total / inside[j]


@_jit
def _inside_weights(n, kernel, radius):
    """Sum of the kernel weights that land inside [0, n), per position."""
    inside = np.empty(n, np.float64)
    for j in range(n):
        total = 0.0
        for t in range(max(0, radius - j), min(2 * radius + 1, n - j + radius)):
            total += kernel[t]
        inside[j] = total
    return inside


@_jit
def gaussian_images(images, kernel, radius, out):
    """Separable normalised correlation of (n, H, W) images with ``kernel`` (2·radius+1 taps), float64 ``out``.

    Down the columns first, then along the rows, as the reference does.
    """
    n, height, width = images.shape
    inside_rows = _inside_weights(height, kernel, radius)
    inside_cols = _inside_weights(width, kernel, radius)
    line = np.empty(height, np.float64)
    column = np.empty(height, np.float64)
    across = np.empty((height, width), np.float64)
    for m in range(n):
        for j in range(width):
            for i in range(height):
                line[i] = images[m, i, j]
            _correlate_inside(line, kernel, radius, inside_rows, column)
            for i in range(height):
                across[i, j] = column[i]
        for i in range(height):
            _correlate_inside(across[i], kernel, radius, inside_cols, out[m, i])


@_jit
def _level(value, top):
    """:func:`medfuse.core.saliency.quantise` of one value: round(clip(float32(value)·top, 0, top)), half to even."""
    scaled = np.float32(value) * top
    return np.int64(np.rint(min(max(scaled, np.float32(0.0)), top)))


@_jit
def histogram_images(images, levels, counts):
    """counts[m, v] = number of pixels of images[m] (n, P) at quantised level v (``counts`` zeroed by the caller)."""
    n, pixels = images.shape
    top = np.float32(levels - 1)
    for m in range(n):
        for j in range(pixels):
            counts[m, _level(images[m, j], top)] += 1


@_jit
def lookup_images(images, levels, tables, out):
    """Saliency look-up: ``out[m, j] = tables[m, level of images[m, j]]`` for (n, P) images, in one pass."""
    n, pixels = images.shape
    top = np.float32(levels - 1)
    for m in range(n):
        table = tables[m]
        row = out[m]
        for j in range(pixels):
            row[j] = table[_level(images[m, j], top)]
