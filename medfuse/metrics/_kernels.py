"""Compiled (numba) loops of the fusion metrics; imported on first use by :mod:`medfuse.metrics._common`
and :mod:`medfuse.metrics.phase`, so importing the metrics does not import numba.

Two hot spots, each replacing NumPy / SciPy passes whose values they reproduce to float round-off
(the metrics stay within 1e-12 relative of the NumPy formulation, tested against it):

* :func:`correlate_zero`: the separable zero-padded Gaussian window of every local-statistics metric
  (QY, QC, VIFF, QP's correlations). ``scipy.ndimage.correlate1d`` down the columns walks the image
  with a stride of a whole row and cost about 3 ms per 512² float64 image; here both passes are
  vectorised row operations (about 0.6 ms).
* :func:`orientation_energy` and :func:`accumulate_orientation`: the per-pixel arithmetic of one
  orientation of Kovesi's phase congruency, one pass over the four scales' responses instead of about
  thirty NumPy temporaries of the image's size.

Every kernel releases the GIL (``nogil``), so the QC report can evaluate slices in parallel threads,
and computes each pixel by the same operations whatever thread runs it. Compiled code is cached on
disk beside the fusion core's kernels (:mod:`medfuse.core.kernels_cache`).
"""

from __future__ import annotations

import numba
import numpy as np

from medfuse.core.kernels_cache import CACHE_DIR

if CACHE_DIR is not None:
    numba.config.CACHE_DIR = CACHE_DIR  # in case numba was imported before medfuse.core.kernels_cache

_jit = numba.njit(nogil=True, cache=CACHE_DIR is not None, error_model="numpy")


@_jit
def correlate_zero(image, kernel, first, out):
    """Separable correlation of an image with a 1-D kernel on both axes, zero outside the image.

    Parameters
    ----------
    image : (H, W) float64, C-contiguous
    kernel : (2r + 1,) float64
    first : int
        Image index of output row / column 0: 0 for the 'same' result
        (``out`` (H, W)), r for the 'valid' one (``out`` (H - 2r, W - 2r)).
    out : (rows, cols) float64
        Written: ``out[i, j] = Σ_s Σ_t k[s] k[t] image[i + first + s - r, j + first + t - r]``,
        down the columns first, then along the rows.
    """
    height, width = image.shape
    rows, cols = out.shape
    taps = kernel.shape[0]
    radius = taps // 2
    column = np.empty(width, np.float64)
    for row in range(rows):
        centre = row + first
        column[:] = 0.0
        for t in range(taps):
            source = centre + t - radius
            if 0 <= source < height:
                _add_scaled(column, image[source], kernel[t], 0, width, 0)
        line = out[row]
        line[:] = 0.0
        for t in range(taps):
            shift = first + t - radius
            _add_scaled(line, column, kernel[t], max(0, -shift), min(cols, width - shift), shift)


@_jit
def _add_scaled(target, values, weight, start, stop, shift):
    """target[j] += weight · values[j + shift] for start <= j < stop (one vectorised row operation).

    On views indexed from 0: with ``j + shift`` numba would check every index for wrap-around and
    the loop would not be vectorised (3x slower).
    """
    if stop <= start:
        return  # the kernel is wider than the image: this tap never lands inside it (a negative stop would wrap)
    destination = target[start:stop]
    source = values[start + shift:stop + shift]
    for j in range(destination.shape[0]):
        destination[j] += weight * source[j]


@_jit
def orientation_energy(responses, epsilon, sum_an, max_an, energy, finest_power):
    """Per-pixel sums of one orientation's log-Gabor responses over its scales.

    Parameters
    ----------
    responses : (S, H, W) complex128
        The filtered image at each scale (even part real, odd part imaginary).
    epsilon : float
        Kovesi's small constant added to the local energy before normalising.
    sum_an, max_an, energy, finest_power : (H, W) float64, written
        Sum and maximum of the amplitudes over the scales; the raw energy
        ``Σ_s e_s·ē + o_s·ō − |e_s·ō − o_s·ē|`` (ē, ō the unit mean phase
        vector), before the noise threshold; the finest scale's squared
        amplitude (its median sets the noise threshold).
    """
    scales, height, width = responses.shape
    parts = responses.view(np.float64)  # (S, H, 2W): real and imaginary parts side by side
    even = np.empty(width, np.float64)
    odd = np.empty(width, np.float64)
    for i in range(height):
        total = sum_an[i]
        largest = max_an[i]
        power = finest_power[i]
        # Scale by scale along the row (contiguous memory); the scales' order is the NumPy sums'.
        for s in range(scales):
            row = parts[s, i]
            for j in range(width):
                e = row[2 * j]
                o = row[2 * j + 1]
                amplitude = np.sqrt(e * e + o * o)
                if s == 0:
                    total[j] = amplitude
                    largest[j] = amplitude
                    power[j] = amplitude * amplitude
                    even[j] = e
                    odd[j] = o
                else:
                    total[j] += amplitude
                    largest[j] = max(largest[j], amplitude)
                    even[j] += e
                    odd[j] += o
        value = energy[i]
        for j in range(width):
            local = np.sqrt(even[j] * even[j] + odd[j] * odd[j]) + epsilon
            even[j] /= local
            odd[j] /= local
            value[j] = 0.0
        for s in range(scales):
            row = parts[s, i]
            for j in range(width):
                e = row[2 * j]
                o = row[2 * j + 1]
                value[j] += e * even[j] + o * odd[j] - abs(e * odd[j] - o * even[j])


@_jit
def accumulate_orientation(sum_an, max_an, energy, threshold, scales, epsilon, cut_off, gain, cos_angle, sin_angle,
                           total_energy, total_sum_an, cov_x2, cov_y2, cov_xy):
    """Add one orientation's thresholded, spread-weighted energy to the running totals.

    Per pixel: ``E = max(energy − threshold, 0)``, frequency spread
    ``width = sum_an / (max_an + ε) / scales``, weight
    ``1 / (1 + exp((cut_off − width)·gain))``; adds the weighted energy to
    ``total_energy``, ``sum_an`` to ``total_sum_an``, and the orientation's
    phase congruency ``W·E / sum_an`` (0 where ``sum_an`` is 0), projected on
    the orientation, to the moment sums ``cov_x2``, ``cov_y2``, ``cov_xy``
    (all (H, W) float64, updated in place).
    """
    height, width = sum_an.shape
    for i in range(height):
        for j in range(width):
            amplitude = sum_an[i, j]
            above = max(energy[i, j] - threshold, 0.0)
            spread = amplitude / (max_an[i, j] + epsilon) / scales
            weighted = 1.0 / (1.0 + np.exp((cut_off - spread) * gain)) * above
            total_sum_an[i, j] += amplitude
            total_energy[i, j] += weighted
            congruency = weighted / amplitude if amplitude > 0 else 0.0
            cx = congruency * cos_angle
            cy = congruency * sin_angle
            cov_x2[i, j] += cx * cx
            cov_y2[i, j] += cy * cy
            cov_xy[i, j] += cx * cy
