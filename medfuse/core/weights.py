"""Fusion weight rules: base (saliency / average), detail (CNN softmax / max-abs), decision maps.

Every function takes or returns a weight stack of shape (K, N, H, W): K
sources, N images (slices) each. Final weights sum to 1 over K at every pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor

import numpy as np

from medfuse.core import kernels
from medfuse.core.filters import GuideWindows, box_mean
from medfuse.core.saliency import saliency_maps

__all__ = [
    "normalise_sum",
    "saliency_weights",
    "average_weights",
    "softmax_weights",
    "upsample_nearest",
    "max_abs_weights",
    "refine",
    "decision_weights",
    "decision_scores",
    "decision_indices",
    "largest_index",
    "one_hot",
    "one_hot_largest",
]

# A per-pixel weight sum below this is treated as "no information": the pixel
# gets equal weights 1/K instead of a division by ~0.
_MIN_SUM = 1e-6


def normalise_sum(weights: np.ndarray, *, clip: bool = False) -> np.ndarray:
    """Scale weights to sum 1 over axis 0 at every pixel (paper eq. 7).

    Parameters
    ----------
    weights : ndarray, shape (K, ...), float
        Modified in place and returned.
    clip : bool
        Clip to [0, 1] first.

    Returns
    -------
    ndarray, shape (K, ...), same dtype
        Where the sum is below 1e-6 (e.g. all-zero saliency of flat images,
        or refined weights cancelling out) every source gets 1/K, so no NaN
        or Inf can arise.
    """
    if clip:
        np.clip(weights, 0.0, 1.0, out=weights)
    total = weights.sum(axis=0)
    if total.min() >= _MIN_SUM:  # the usual case: no degenerate pixel (and no NaN)
        weights /= total
        return weights
    degenerate = ~(total >= _MIN_SUM)
    weights /= np.where(degenerate, 1.0, total)
    weights[:, degenerate] = 1.0 / weights.shape[0]
    return weights


def saliency_weights(
    sources: np.ndarray,
    levels: int = 256,
    normalisation: str = "minmax",
    histograms: np.ndarray | None = None,
) -> np.ndarray:
    """Unrefined base weights W_k = S_k / Σ_j S_j (paper eq. 5).

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32 in [0, 1]
    levels, normalisation, histograms
        See :func:`medfuse.core.saliency.saliency_maps`.

    Returns
    -------
    ndarray, shape (K, N, H, W), float32, in [0, 1], summing to 1 over K
    """
    return normalise_sum(saliency_maps(sources, levels, normalisation, histograms))


def average_weights(shape: tuple[int, ...]) -> np.ndarray:
    """Equal weights 1/K, shape (K, ...) float32 (the ablation's AVG rule)."""
    return np.full(shape, 1.0 / shape[0], dtype=np.float32)


def softmax_weights(activity: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax across sources (axis 0) of CNN activity (paper eq. 11).

    Parameters
    ----------
    activity : ndarray, shape (K, ...), float, >= 0
    temperature : float > 0
        The activity is divided by it first (the paper: 1). Large values
        give weights near 1/K; small ones approach a hard choose-max.

    Returns
    -------
    ndarray, shape (K, ...), float32, in [0, 1], summing to 1 over K
        Computed as exp((a − max_k a) / T) / Σ exp(...) so large activities do not overflow.
    """
    shifted = activity.astype(np.float32) - activity.max(axis=0, keepdims=True)
    if temperature != 1.0:
        shifted /= np.float32(temperature)
    np.exp(shifted, out=shifted)
    shifted /= shifted.sum(axis=0, keepdims=True)
    return shifted


def upsample_nearest(maps: np.ndarray, size: tuple[int, int], stride: int) -> np.ndarray:
    """Nearest-neighbour upsampling of (..., h, w) cell maps to (..., H, W).

    An extractor of stride s pads the image bottom/right to a multiple of s
    and returns ``h, w = ceil(H / s), ceil(W / s)`` cells; cell (i, j) covers
    pixels [i·s, (i+1)·s) × [j·s, (j+1)·s), cropped at the image edge. Every
    output pixel (y, x) takes the value of cell (y // s, x // s).

    Parameters
    ----------
    maps : ndarray, shape (..., h, w)
    size : (H, W)
        Output image size.
    stride : int
        The extractor's stride (``ActivityExtractor.stride``). It cannot be
        inferred from the sizes: H = 20 at stride 8 gives h = 3 cells, which
        ceil(H / h) would read as stride 7.

    Returns
    -------
    ndarray, shape (..., H, W), maps' dtype
    """
    big_h, big_w = size
    stride_h = stride_w = _tiling_stride(maps.shape[-2:], size, stride)
    # Repeating whole rows, then columns, is several times faster than a fancy index.
    return np.repeat(np.repeat(maps, stride_h, axis=-2)[..., :big_h, :], stride_w, axis=-1)[..., :big_w]


def _tiling_stride(cells: tuple[int, int], size: tuple[int, int], stride: int) -> int:
    """``stride`` as an int, once checked that ``cells`` (h, w) cells of that stride tile an image of ``size`` (H, W)."""
    h, w = cells
    big_h, big_w = size
    if h > big_h or w > big_w or h < 1 or w < 1:
        raise ValueError(f"cannot upsample maps of size {(h, w)} to {(big_h, big_w)}")
    if isinstance(stride, bool) or int(stride) != stride or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    stride = int(stride)
    if -(-big_h // stride) != h or -(-big_w // stride) != w:
        raise ValueError(
            f"maps of size {(h, w)} do not tile an image of size {(big_h, big_w)} with stride {(stride, stride)}"
        )
    return stride


def max_abs_weights(details: np.ndarray) -> np.ndarray:
    """Choose-max detail weights: 1 for the source with the largest |D_k|, else 0.

    Ties go to the lowest source index (deterministic).

    Parameters
    ----------
    details : ndarray, shape (K, ...), float

    Returns
    -------
    ndarray, shape (K, ...), float32, one-hot over axis 0
    """
    # Source k wins where |D_k| beats every earlier source strictly and no
    # later one is larger (ties to the lowest index, as argmax); built from
    # running maxima over K, each step one contiguous comparison, instead of
    # an argmax along axis 0 that strides a whole image between the K values.
    magnitude = np.abs(details)
    k = details.shape[0]
    winners = np.empty(details.shape, np.float32)
    later = magnitude[k - 1]  # max |D_i+1..K-1| at step i of the backward pass
    winners[k - 1] = 1.0
    for i in range(k - 2, -1, -1):
        np.greater_equal(magnitude[i], later, out=winners[i])
        later = np.maximum(later, magnitude[i])
    earlier = magnitude[0]  # max |D_0..i-1| at step i of the forward pass
    for i in range(1, k):
        winners[i] *= magnitude[i] > earlier
        earlier = np.maximum(earlier, magnitude[i])
    return winners


def refine(
    weights: np.ndarray, guides: np.ndarray | GuideWindows, radius: int, eps: float, *, clip: bool = False
) -> np.ndarray:
    """Guided-filter each weight map by its source, then renormalise (paper eqs. 6–7, 12).

    Parameters
    ----------
    weights : ndarray, shape (K, N, H, W)
    guides : ndarray, shape (K, N, H, W), or GuideWindows of such an array
        The source images I_k. Passing the same :class:`GuideWindows` to
        several refinements with equal radius computes mean(I_k), var(I_k) once.
    radius, eps : int, float
        Guided-filter parameters.
    clip : bool
        Clip the filtered weights to [0, 1] before renormalising.

    Returns
    -------
    ndarray, shape (K, N, H, W), float32, summing to 1 over K
        Without ``clip`` the values may leave [0, 1] (the guided filter does
        not preserve range; with small ε it overshoots at edges).
    """
    if not isinstance(guides, GuideWindows):
        guides = GuideWindows(guides)
    filtered = guides.filter(weights, radius, eps, dtype=np.float32)
    return normalise_sum(filtered, clip=clip)


def decision_weights(sources: np.ndarray, radius: int, activity: np.ndarray | None = None) -> np.ndarray:
    """One-hot maps of the source that decides each pixel (the pyramid rule).

    The score of source k at a pixel is its local energy, the mean of I_k²
    over the (2·radius + 1)² window, times its CNN activity there when
    ``activity`` is given. Each pixel takes the source with the largest
    score; ties (e.g. every source black) go to the first source.

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32 in [0, 1]
    radius : int >= 0
        Window radius of the local energy.
    activity : ndarray, shape (K, N, H, W), optional
        CNN activity upsampled to the image size (non-negative).

    Returns
    -------
    ndarray, shape (K, N, H, W), float32
        1 for the deciding source, 0 for the others (sums to 1 over K).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.zeros((1, 8, 8), np.float32); a[0, :, :4] = 1
    >>> w = decision_weights(np.stack([a, 1 - a]), radius=0)
    >>> w[0, 0, 0].tolist(), w[1, 0, 0, 4:].tolist()
    ([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0])
    """
    return one_hot(largest_index(decision_scores(sources, radius, activity)), sources.shape[0])


def decision_scores(
    sources: np.ndarray, radius: int, activity: np.ndarray | None = None, *, box: Callable = box_mean
) -> np.ndarray:
    """The scores of :func:`decision_weights`: mean of I_k² over the window, times the activity if given.

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float
    radius : int >= 0
    activity : ndarray, shape (K, N, H, W), optional
    box : callable
        The box mean (``box(images, radius)``, float64 result); the NumPy reference's for the tests' oracle.

    Returns
    -------
    ndarray, shape (K, N, H, W), float64
    """
    score = box(np.square(sources, dtype=np.float64), radius)
    if activity is not None:
        score *= activity
    return score


def decision_indices(
    sources: np.ndarray,
    radius: int,
    cells: np.ndarray | None = None,
    stride: int = 1,
    *,
    parts: int = 1,
    executor: Executor | None = None,
) -> np.ndarray:
    """The index of the source that decides each pixel: :func:`decision_weights`, compiled.

    One pass over the images (:func:`medfuse.core.kernels.decide_rows`): the
    local energy's window sums are added up directly in float64 (not slid),
    and the CNN activity is read from its cell, so the upsampled activity is
    never built. The box mean of :func:`decision_scores` slides running sums
    instead: scores differ by float round-off (~1e-16 of the image's largest
    score), so a decision can differ where two scores tie that closely, above
    all in black areas, where running sums leave round-off and direct sums
    give every source exactly 0 (a tie: the first source decides).

    Parameters
    ----------
    sources : ndarray, shape (K, N, H, W), float32 in [0, 1], K <= 255
    radius : int >= 0
        Window radius of the local energy.
    cells : ndarray, shape (K, N, ceil(H / stride), ceil(W / stride)), real, optional
        CNN activity per cell (as the extractor returns it); none: the energy decides alone.
    stride : int
        Pixels per cell side (see :func:`upsample_nearest`).
    parts : int >= 1
        Share the rows among this many tasks of ``executor`` (same result for any count).
    executor : concurrent.futures.Executor, optional
        Runs the tasks; none: all in the calling thread.

    Returns
    -------
    ndarray, shape (N, H, W), uint8
        The source with the largest score; ties go to the first.
    """
    k, n, h, w = sources.shape
    if k > 255:
        raise ValueError(f"at most 255 sources can decide, got {k}")
    if cells is None:
        cells, stride = np.zeros((k, n, 0, 0)), 1
    else:
        stride = _tiling_stride(cells.shape[-2:], (h, w), stride)
        cells = np.ascontiguousarray(cells, dtype=np.float64)
    images = np.ascontiguousarray(sources, dtype=np.float32)
    chosen = np.empty((n, h, w), np.uint8)
    kernels.run_pieces(
        lambda index, first, stop: kernels.decide_rows(images, cells, stride, int(radius), index, first, stop, chosen),
        kernels.split_work(n, h, parts),
        executor,
    )
    return chosen


def largest_index(scores: np.ndarray) -> np.ndarray:
    """Index over axis 0 of the largest score; ties go to the first source.

    Parameters
    ----------
    scores : ndarray, shape (K, ...), real

    Returns
    -------
    ndarray, shape ``scores.shape[1:]``, uint8 (intp for more than 255 sources)
    """
    # A running comparison (strictly greater wins, so ties keep the earlier
    # source, as argmax does) is much faster than argmax over the first axis.
    best = scores[0].copy()
    chosen = np.zeros(best.shape, np.uint8 if scores.shape[0] <= 256 else np.intp)
    for k in range(1, scores.shape[0]):
        better = scores[k] > best
        chosen[better] = k
        np.maximum(best, scores[k], out=best)
    return chosen


def one_hot(chosen: np.ndarray, count: int, dtype: type = np.float32) -> np.ndarray:
    """Maps that are 1 where ``chosen`` is their index, else 0.

    Parameters
    ----------
    chosen : ndarray, shape (...), integer in [0, count)
    count : int
        K, the number of maps.
    dtype : numpy dtype of the result

    Returns
    -------
    ndarray, shape (count, ...), ``dtype``; sums to 1 over axis 0.
    """
    weights = np.empty((count,) + chosen.shape, dtype)
    for k in range(count):
        np.equal(chosen, k, out=weights[k], casting="unsafe")
    return weights


def one_hot_largest(scores: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """1 where a source's score is the largest over axis 0, else 0; ties go to the first source.

    Parameters
    ----------
    scores : ndarray, shape (K, ...), real
    dtype : numpy dtype of the result

    Returns
    -------
    ndarray, shape of ``scores``, ``dtype``; sums to 1 over axis 0.
    """
    return one_hot(largest_index(scores), scores.shape[0], dtype)
