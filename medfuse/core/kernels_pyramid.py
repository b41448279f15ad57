"""The numba kernels of the pyramid rule; imported on the first call by :mod:`medfuse.core.kernels`.

What they compute is :func:`medfuse.core.weights.decision_weights` followed by
:func:`medfuse.core.pyramid.blend` (coarsest band by the max rule or by the
decision maps), the envelope clip and the expansion of the coarsest-band
weights, in three passes over full- or half-size images and a few over the
small levels, instead of the NumPy code's dozens of whole-array passes and
their temporaries:

1. :func:`decide_rows` (full size): local energy of every source (window
   sums of I² added up directly in float64), times the CNN activity read from
   its cell (the upsampled copy is never built), argmax over K; writes the
   index of the deciding source (uint8), not K one-hot maps.
2. :func:`reduce_finest_rows` (half size): level 1 of the Gaussian pyramids
   of the sources and of the one-hot decision maps, read from that index.
3. :func:`blend_coarse` (half size and below, one call per slice): the rest of
   the pyramids, the coarsest band's weights, the blended bands of levels
   1 … L−1 collapsed into level 1.
4. :func:`blend_finest_rows` (full size): the finest band of the chosen
   source, plus the expanded collapse, clipped; optionally the coarsest-band
   weights expanded to full size, clipped and renormalised.

Passes 1, 2 and 4 work on row ranges of one slice, so threads can share a
single image; no value depends on the range a call is given (no running sum
crosses rows), so the output is byte-identical for any number of threads.
The pyramid steps perform exactly the float32 operations of the NumPy code,
in its order, so they give its bytes. The decision's scores differ from the
NumPy reference's (running sums) by float round-off, which can flip a
decision only where two scores tie to ~1e-16 of the image's largest score
(:func:`medfuse.core.weights.decision_indices`).

Rows are always indexed through the full (K, N, H, W) arrays (``a[k, n, i]``):
such a row is known to be contiguous and its loops are vectorised, while a
row of a view like ``a[:, n]`` is not (measured at 512²: the full-size pass
with the base weights took 2.4x as long through such views).
"""

from __future__ import annotations

import numpy as np

from medfuse.core.kernels_compiled import _inverse_counts, _jit

_F1 = np.float32(1.0)
_F4 = np.float32(4.0)
_F6 = np.float32(6.0)
_F8 = np.float32(8.0)
_F16 = np.float32(16.0)
_HALF = np.float32(0.5)
_MIN_SUM = np.float32(1e-6)  # medfuse.core.weights.normalise_sum's degenerate-sum bound


@_jit
def _mirror(t, n):
    """Index of t in [0, n) under half-sample symmetric extension (d c b a | a b c d), repeated for any t."""
    period = 2 * n
    t = t % period
    return t if t < n else period - 1 - t


@_jit
def _square_row(row, out):
    for j in range(row.shape[0]):
        x = np.float64(row[j])
        out[j] = x * x


@_jit
def decide_rows(sources, cells, stride, radius, n, row_start, row_stop, chosen):
    """The deciding source of each pixel of rows [row_start, row_stop) of slice n.

    The local energy's window sums are added up directly, rows top to bottom,
    then columns left to right (float64; squares of float32 are exact), not
    slid: a score depends only on the pixels in its window, not on which rows
    a call was given, and a black window scores exactly 0 (a running sum
    would leave round-off there and decide black pixels by it). Costs
    O(radius) per pixel; the default radius is 3.

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32
    cells : ndarray, shape (K, N, h, w), float64
        CNN activity per cell of ``stride`` pixels; h = w = 0: energy alone.
    stride, radius : int
    n, row_start, row_stop : int
        The slice and its rows.
    chosen : ndarray, shape (N, H, W), uint8
        Written: argmax over k of mean_window(I_k²) · activity_k, ties to the lowest k.
    """
    count, _, height, width = sources.shape
    has_activity = cells.shape[2] > 0
    side = 2 * radius + 1
    inv_rows = _inverse_counts(height, radius)
    inv_cols = _inverse_counts(width, radius)
    squares = np.empty((count, side, width), np.float64)  # I_k² of rows i−r … i+r, row y at y % side
    padded = np.zeros(width + 2 * radius, np.float64)  # a row of window column sums between r zeros
    column = padded[radius:radius + width]
    activity = np.empty((count, width), np.float64)  # the cells of the current row, one value per pixel
    score = np.empty(width, np.float64)
    factor = np.empty(width, np.float64)  # 1 / (pixels of the cut window) along the current row
    best = np.empty(width, np.float64)
    winner = np.empty(width, np.uint8)
    for y in range(max(row_start - radius, 0), min(row_start + radius, height)):
        for k in range(count):
            _square_row(sources[k, n, y], squares[k, y % side])
    for i in range(row_start, row_stop):
        if i + radius < height:
            for k in range(count):
                _square_row(sources[k, n, i + radius], squares[k, (i + radius) % side])
        if has_activity and (i == row_start or i % stride == 0):
            _activity_row(cells[:, n, i // stride], stride, activity)
        top = max(i - radius, 0)
        bottom = min(i + radius, height - 1)
        for j in range(width):
            factor[j] = inv_rows[i] * inv_cols[j]
        for k in range(count):
            # Rows top to bottom, then the 2r+1 columns left to right (the zeros outside the row add nothing).
            _add_ring_rows(column, squares[k], top, bottom - top + 1)
            _add_shifted(score, padded, side)
            _keep_best(score, factor, activity[k], has_activity, k, best, winner)
        chosen[n, i] = winner


@_jit
def _keep_best(sums, factor, activity, has_activity, k, best, winner):
    """Score of source k = window sum · factor (· activity); where it beats ``best`` (or for k = 0), k wins."""
    for j in range(sums.shape[0]):
        score = sums[j] * factor[j]
        if has_activity:
            score *= activity[j]
        better = k == 0 or score > best[j]
        best[j] = score if better else best[j]
        winner[j] = k if better else winner[j]


@_jit
def _add_ring_rows(out, ring, first, count):
    """out = ((r_0 + r_1) + r_2) + … over ``count`` rows r_m = ring[(first + m) % len(ring)], two rows per pass."""
    period = ring.shape[0]
    if count == 1:
        out[:] = ring[first % period]
        return
    a = ring[first % period]
    b = ring[(first + 1) % period]
    for j in range(out.shape[0]):
        out[j] = a[j] + b[j]
    m = 2
    while m + 1 < count:
        a = ring[(first + m) % period]
        b = ring[(first + m + 1) % period]
        for j in range(out.shape[0]):
            out[j] = (out[j] + a[j]) + b[j]
        m += 2
    if m < count:
        a = ring[(first + m) % period]
        for j in range(out.shape[0]):
            out[j] += a[j]


@_jit
def _add_shifted(out, row, count):
    """out[j] = ((row[j] + row[j+1]) + row[j+2]) + … + row[j+count−1], two terms per pass over ``out``."""
    width = out.shape[0]
    if count == 1:
        out[:] = row[:width]
        return
    for j in range(width):
        out[j] = row[j] + row[j + 1]
    m = 2
    while m + 1 < count:
        a = row[m:m + width]
        b = row[m + 1:m + 1 + width]
        for j in range(width):
            out[j] = (out[j] + a[j]) + b[j]
        m += 2
    if m < count:
        a = row[m:m + width]
        for j in range(width):
            out[j] += a[j]


@_jit
def _activity_row(cell_rows, stride, out):
    """out[k, j] = cell_rows[k, j // stride]: one row of the activity upsampled nearest."""
    count, width = out.shape
    for k in range(count):
        for cell in range(cell_rows.shape[1]):
            value = np.float64(cell_rows[k, cell])
            for j in range(cell * stride, min((cell + 1) * stride, width)):
                out[k, j] = value


@_jit
def _reduce_columns(r0, r1, r2, r3, r4, out):
    """out = ((r0 + r4) + 4·(r1 + r3) + 6·r2) / 16 in float32, the order of the NumPy reduce."""
    for j in range(out.shape[0]):
        value = r0[j] + r4[j]
        value += _F4 * (r1[j] + r3[j])
        value += _F6 * r2[j]
        out[j] = value / _F16


@_jit
def _reduce_one_hot_columns(c0, c1, c2, c3, c4, k, out):
    """:func:`_reduce_columns` of the rows of the one-hot map (chosen == k)."""
    for j in range(out.shape[0]):
        value = np.float32(c0[j] == k) + np.float32(c4[j] == k)
        value += _F4 * (np.float32(c1[j] == k) + np.float32(c3[j] == k))
        value += _F6 * np.float32(c2[j] == k)
        out[j] = value / _F16


@_jit
def _reduce_across(padded, width, out):
    """Reduce along a row: ``padded`` holds the row at [2, 2 + width); its mirrored ends are filled here."""
    padded[0] = padded[2 + _mirror(-2, width)]
    padded[1] = padded[2 + _mirror(-1, width)]
    padded[2 + width] = padded[2 + _mirror(width, width)]
    padded[3 + width] = padded[2 + _mirror(width + 1, width)]
    for j in range(out.shape[0]):
        at = 2 * j
        value = padded[at] + padded[at + 4]
        value += _F4 * (padded[at + 1] + padded[at + 3])
        value += _F6 * padded[at + 2]
        out[j] = value / _F16


@_jit
def _reduce_image(image, out, padded):
    """The next Gaussian level of one (H, W) float32 image into ``out`` (ceil(H/2), ceil(W/2))."""
    height, width = image.shape
    for i in range(out.shape[0]):
        at = 2 * i
        _reduce_columns(image[_mirror(at - 2, height)], image[_mirror(at - 1, height)], image[at],
                        image[_mirror(at + 1, height)], image[_mirror(at + 2, height)], padded[2:2 + width])
        _reduce_across(padded, width, out[i])


@_jit
def reduce_finest_rows(sources, chosen, n, row_start, row_stop, gauss, weights):
    """Level 1 of the Gaussian pyramids of the sources and of the one-hot maps, rows [row_start, row_stop).

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32
    chosen : ndarray, shape (N, H, W), uint8
    n : int
        The slice.
    row_start, row_stop : int
        Rows of level 1 (of ceil(H/2)).
    gauss, weights : ndarray, shape (K, N, ceil(H/2), ceil(W/2)), float32
        Written: the sources' level 1, the one-hot maps' level 1.
    """
    count, _, height, width = sources.shape
    decided = chosen[n]
    padded = np.empty(width + 4, np.float32)
    inner = padded[2:2 + width]
    for i in range(row_start, row_stop):
        at = 2 * i
        rows = (_mirror(at - 2, height), _mirror(at - 1, height), at, _mirror(at + 1, height),
                _mirror(at + 2, height))
        for k in range(count):
            image = sources[k, n]
            _reduce_columns(image[rows[0]], image[rows[1]], image[rows[2]], image[rows[3]], image[rows[4]], inner)
            _reduce_across(padded, width, gauss[k, n, i])
            _reduce_one_hot_columns(decided[rows[0]], decided[rows[1]], decided[rows[2]], decided[rows[3]],
                                    decided[rows[4]], k, inner)
            _reduce_across(padded, width, weights[k, n, i])


@_jit
def _expand_columns(coarse, i, out):
    """Row i of the expansion of (h, w) ``coarse`` down the columns (the NumPy expand's first axis)."""
    last = coarse.shape[0] - 1
    m = i // 2
    below = coarse[min(m + 1, last)]
    here = coarse[m]
    if i % 2 == 0:
        above = coarse[max(m - 1, 0)]
        for j in range(out.shape[0]):
            out[j] = (above[j] + _F6 * here[j] + below[j]) / _F8
    else:
        for j in range(out.shape[0]):
            out[j] = (here[j] + below[j]) * _HALF


@_jit
def _expand_across(row, out):
    """Expansion along a row: ``row`` (w,) to ``out`` (W,), W in {2w − 1, 2w}, the NumPy expand's second axis."""
    last = row.shape[0] - 1
    size = out.shape[0]
    for m in (0, last):
        here = row[m]
        below = row[min(m + 1, last)]
        out[2 * m] = (row[max(m - 1, 0)] + _F6 * here + below) / _F8
        if 2 * m + 1 < size:
            out[2 * m + 1] = (here + below) * _HALF
    for m in range(1, last):  # inside: no clamped neighbour, no cut end (a loop the compiler vectorises)
        here = row[m]
        below = row[m + 1]
        out[2 * m] = (row[m - 1] + _F6 * here + below) / _F8
        out[2 * m + 1] = (here + below) * _HALF


@_jit
def _expand_image(coarse, out, line):
    """Expand (h, w) ``coarse`` into ``out`` (H, W) (the finer level's size); ``line`` is scratch of >= w."""
    line = line[:coarse.shape[1]]
    for i in range(out.shape[0]):
        _expand_columns(coarse, i, line)
        _expand_across(line, out[i])


@_jit
def _one_hot_largest(levels, out):
    """out[k] = 1 where levels[k] is the largest over k (ties to the lowest k), else 0; (K, h, w) float32."""
    count, height, width = levels.shape
    for i in range(height):
        for j in range(width):
            best = levels[0, i, j]
            winner = 0
            for k in range(1, count):
                if levels[k, i, j] > best:
                    best = levels[k, i, j]
                    winner = k
            for k in range(count):
                out[k, i, j] = np.float32(k == winner)


@_jit
def _weighted_sum(weights, bands, out):
    """out = Σ_k weights[k] · bands[k], k in order (as NumPy's sum over axis 0), float32."""
    count, height, width = bands.shape
    for i in range(height):
        total = out[i]
        for j in range(width):
            total[j] = weights[0, i, j] * bands[0, i, j]
        for k in range(1, count):
            weight = weights[k, i]
            band = bands[k, i]
            for j in range(width):
                total[j] += weight[j] * band[j]


@_jit
def blend_coarse(gauss, weights, n, levels, coarsest_max, collapsed, coarse_weights, weights_level1):
    """Pyramid levels 1 … L−1 of slice n: blended band by band and collapsed into level 1.

    Parameters
    ----------
    gauss, weights : ndarray, shape (K, N, h1, w1), float32
        Level 1 of the sources' and of the one-hot maps' Gaussian pyramids.
    n : int
    levels : int >= 2
        L, counting the finest level 0.
    coarsest_max : bool
        The coarsest band's weights are the one-hot maps of the source brightest there
        (else the decision maps' Gaussian level).
    collapsed : ndarray, shape (N, h1, w1), float32
        Written: Σ_k G_{L−1}(D_k)·G_{L−1}(I_k), expanded and plus each blended band Σ_k G_l(D_k)·L_l(I_k)
        down to level 1.
    coarse_weights : ndarray, shape (K, N, h_{L−1}, w_{L−1}), float32
        Written: the coarsest band's weights.
    weights_level1 : ndarray, shape (K, N, h1, w1) or (K, N, 0, 0), float32
        Written unless empty: ``coarse_weights`` expanded to level 1.
    """
    count, _, height, width = gauss.shape
    source_levels = [np.ascontiguousarray(gauss[:, n])]
    weight_levels = [np.ascontiguousarray(weights[:, n])]
    padded = np.empty(width + 4, np.float32)
    for _ in range(levels - 2):
        above = source_levels[-1]
        size = ((above.shape[1] + 1) // 2, (above.shape[2] + 1) // 2)
        source_next = np.empty((count,) + size, np.float32)
        weight_next = np.empty((count,) + size, np.float32)
        for k in range(count):
            _reduce_image(above[k], source_next[k], padded)
            _reduce_image(weight_levels[-1][k], weight_next[k], padded)
        source_levels.append(source_next)
        weight_levels.append(weight_next)
    top = source_levels[-1]
    band_weights = np.empty(top.shape, np.float32)
    if coarsest_max:
        _one_hot_largest(top, band_weights)
    else:
        band_weights[:] = weight_levels[-1]
    image = np.empty(top.shape[1:], np.float32)
    _weighted_sum(band_weights, top, image)
    line = np.empty(width, np.float32)
    for level in range(len(source_levels) - 2, -1, -1):
        fine = source_levels[level]
        coarse = source_levels[level + 1]
        bands = np.empty(fine.shape, np.float32)
        for k in range(count):
            _expand_image(coarse[k], bands[k], line)
            bands[k] = fine[k] - bands[k]
        blended = np.empty(fine.shape[1:], np.float32)
        _weighted_sum(weight_levels[level], bands, blended)
        expanded = np.empty(fine.shape[1:], np.float32)
        _expand_image(image, expanded, line)
        image = blended + expanded
    collapsed[n] = image
    coarse_weights[:, n] = band_weights
    if weights_level1.shape[2] > 0:
        expanded_weights = band_weights.copy()
        for level in range(len(source_levels) - 2, -1, -1):
            finer = np.empty(source_levels[level].shape, np.float32)
            for k in range(count):
                _expand_image(expanded_weights[k], finer[k], line)
            expanded_weights = finer
        weights_level1[:, n] = expanded_weights


@_jit
def blend_finest_rows(sources, chosen, gauss, collapsed, weights_level1, n, row_start, row_stop, envelope,
                      fused, base_weights):
    """The fused rows [row_start, row_stop) of slice n: finest band of the chosen source + expanded collapse, clipped.

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32
    chosen : ndarray, shape (N, H, W), uint8
    gauss : ndarray, shape (K, N, h1, w1), float32
        Level 1 of the sources' Gaussian pyramids.
    collapsed : ndarray, shape (N, h1, w1), float32
        From :func:`blend_coarse`.
    weights_level1 : ndarray, shape (K, N, h1, w1) or (K, N, 0, 0), float32
        The coarsest band's weights expanded to level 1 (empty: no ``base_weights``).
    n, row_start, row_stop : int
    envelope : bool
        Clip to [min_k I_k, max_k I_k] at each pixel (else to [0, 1]).
    fused : ndarray, shape (N, H, W), float32
        Written.
    base_weights : ndarray, shape (K, N, H, W) or (K, N, 0, 0), float32
        Written unless empty: ``weights_level1`` expanded to full size, clipped to [0, 1]
        and renormalised over K as :func:`medfuse.core.weights.normalise_sum`.
    """
    count, _, height, width = sources.shape
    narrow = gauss.shape[3]
    keep_weights = base_weights.shape[2] > 0
    line = np.empty(narrow, np.float32)
    expanded = np.empty(width, np.float32)
    total = np.empty(width, np.float32)
    low = np.empty(width, np.float32)
    high = np.empty(width, np.float32)
    for i in range(row_start, row_stop):
        decided = chosen[n, i]
        for k in range(count):
            row = sources[k, n, i]
            _expand_columns(gauss[k, n], i, line)
            _expand_across(line, expanded)
            if k == 0:
                for j in range(width):
                    total[j] = np.float32(decided[j] == 0) * (row[j] - expanded[j])
                low[:] = row
                high[:] = row
            else:
                for j in range(width):
                    total[j] += np.float32(decided[j] == k) * (row[j] - expanded[j])
                    low[j] = min(low[j], row[j])
                    high[j] = max(high[j], row[j])
        _expand_columns(collapsed[n], i, line)
        _expand_across(line, expanded)
        out = fused[n, i]
        if envelope:
            for j in range(width):
                value = total[j] + expanded[j]
                value = value if value > low[j] else low[j]
                out[j] = value if value < high[j] else high[j]
        else:
            for j in range(width):
                value = total[j] + expanded[j]
                value = value if value > 0.0 else np.float32(0.0)
                out[j] = value if value < _F1 else _F1
        if keep_weights:
            _base_weights_row(weights_level1, n, i, line, base_weights, total)


@_jit
def _base_weights_row(weights_level1, n, i, line, base_weights, total):
    """Row i of slice n of the level-1 weights (K, N, h1, w1) expanded, clipped to [0, 1] and renormalised over K
    into the same row of ``base_weights`` (K, N, H, W)."""
    count, _, _, width = base_weights.shape
    for k in range(count):
        row = base_weights[k, n, i]
        _expand_columns(weights_level1[k, n], i, line)
        _expand_across(line, row)
        for j in range(width):
            value = row[j] if row[j] > 0.0 else np.float32(0.0)
            row[j] = value if value < _F1 else _F1
        if k == 0:
            total[:] = row
        else:
            for j in range(width):
                total[j] += row[j]
    equal = np.float32(1.0 / count)
    for k in range(count):
        row = base_weights[k, n, i]
        for j in range(width):
            row[j] = row[j] / total[j] if total[j] >= _MIN_SUM else equal
