"""Fusion of K pre-registered grey images: the pyramid rule and the paper's two-scale rule.

Pyramid rule (medfuse's default, ``FusionConfig.rule == 'pyramid'``):

1. CNN             activity F̂_k (as below), upsampled nearest
2. decision        D_k = 1 where k maximises F̂_k · mean_window(I_k²), else 0
3. blending        F = collapse_l(Σ_k G_l(D_k) · L_l(I_k)) over the Laplacian
                   pyramids L_l of the sources and Gaussian pyramids G_l of D_k;
                   the coarsest band from the source brightest there
4. envelope        F clipped to [min_k I_k, max_k I_k] at every pixel

Two-scale rule (the paper's, section III, ``rule == 'two-scale'``):

1. decomposition   B_k = M(I_k), D_k = I_k − B_k
2. base weights    W_b,k = guided(S_k / Σ S_j, I_k; r_b, ε_b), renormalised
3. CNN             activity F̂_k = ||ReLU features of I_k||₁ over channels
4. detail weights  W_d,k = guided(upsample(softmax_k F̂_k / T), I_k; r_d, ε_d), renormalised
5. reconstruction  F = Σ W_b,k B_k + Σ W_d,k D_k, clipped to the sources' range

All K sources (and, for volumes, all Z slices) go through every stage as one
array, and through the CNN in one call.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from medfuse.core.config import FusionConfig
from medfuse.core.decomposition import decompose
from medfuse.core.extractor import ActivityExtractor
from medfuse.core.filters import GuideWindows
from medfuse.core.pyramid import blend_decisions
from medfuse.core.weights import (
    average_weights,
    decision_indices,
    max_abs_weights,
    normalise_sum,
    one_hot,
    saliency_weights,
    softmax_weights,
    upsample_nearest,
)
from medfuse.errors import FusionError, InputError

__all__ = ["FusionResult", "fuse_stack", "fuse_slices", "STAGES"]

STAGES = ("decomposition", "base_weights", "cnn", "detail_weights", "reconstruction")
PYRAMID_STAGES = ("cnn", "decision", "blending")

# Values this far outside [0, 1] are float round-off, clipped rather than refused.
_RANGE_SLACK = 1e-5


@dataclass(frozen=True)
class FusionResult:
    """Output of one fusion.

    Attributes
    ----------
    fused : ndarray, shape (H, W) float32 in [0, 1]; (H, W, 3) when
        :func:`medfuse.api.fuse` was given a colour source.
    base_weights : ndarray, shape (K, H, W), float32, summing to 1 over K.
        Two-scale rule: the refined base weights. Pyramid rule: the weights
        that blended the coarsest band (the large-scale intensities),
        expanded to full size; in [0, 1].
    detail_weights : ndarray, shape (K, H, W), float32, summing to 1 over K
        Two-scale rule: the refined detail weights (values may leave [0, 1]
        unless ``clip_detail_weights``). Pyramid rule: the one-hot decision
        maps, which blend the finest band.
    timings : dict[str, float]
        Seconds spent per stage (keys of :data:`STAGES` or
        :data:`PYRAMID_STAGES`, plus any the caller adds).
    config : FusionConfig
        The configuration used.
    extractor_name : str or None
        Name of the activity extractor used (None for the max-abs rule).
    """

    fused: np.ndarray
    base_weights: np.ndarray
    detail_weights: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    config: FusionConfig | None = None
    extractor_name: str | None = None


def fuse_stack(
    sources: np.ndarray,
    config: FusionConfig | None = None,
    extractor: ActivityExtractor | None = None,
    *,
    saliency_histograms: np.ndarray | None = None,
    threads: int = 1,
) -> FusionResult:
    """Fuse K pre-registered grey images.

    Parameters
    ----------
    sources : ndarray, shape (K, H, W), float32 in [0, 1], K >= 2
    config : FusionConfig, optional
        Default ``FusionConfig()``.
    extractor : ActivityExtractor, optional
        Required when ``config.uses_cnn``.
    saliency_histograms : ndarray, shape (K, config.saliency_levels), optional
        Two-scale rule only (the pyramid rule has no saliency). Histograms to build each source's saliency table from instead of the
        image's own (volume-wide saliency).
    threads : int >= 1
        At most this many threads filter the sources in parallel (groups of
        sources, one group per thread, fewer for small images where threads
        do not pay: about 2**17 pixels of work per thread; the pyramid rule
        shares rows of the image among them instead). The output is
        byte-identical whatever the count: every image is filtered by the
        same operations, only on another thread. Default 1, for callers
        that already run one fusion per core (the volume path's workers).

    Returns
    -------
    FusionResult
        ``fused`` (H, W) float32; weights (K, H, W) float32; per-stage timings.
    """
    config = config or FusionConfig()
    stack = _checked_stack(sources, ndim=3, what="sources (K, H, W)")
    fused, base_w, detail_w, timings = _fuse(stack[:, None], config, extractor, saliency_histograms, threads)
    return FusionResult(
        fused=fused[0],
        base_weights=base_w[:, 0],
        detail_weights=detail_w[:, 0],
        timings=timings,
        config=config,
        extractor_name=getattr(extractor, "name", None) if config.uses_cnn else None,
    )


def fuse_slices(
    volumes: np.ndarray,
    config: FusionConfig | None = None,
    extractor: ActivityExtractor | None = None,
    *,
    saliency_histograms: np.ndarray | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Fuse K co-registered volumes slice by slice, all slices batched.

    Slice z of the output fuses slice z of every source, exactly as
    :func:`fuse_stack` would, but all K·Z slices pass each stage (and the CNN)
    as one array.

    Parameters
    ----------
    volumes : ndarray, shape (K, Z, H, W), float32 in [0, 1], K >= 2
    config : FusionConfig, optional
    extractor : ActivityExtractor, optional
        Required when ``config.uses_cnn``.
    saliency_histograms : ndarray, shape (K, config.saliency_levels), optional
        Two-scale rule only. Volume-wide histograms (see :func:`medfuse.core.saliency.level_histogram`);
        default: each slice's own histogram.
    threads : int >= 1
        As for :func:`fuse_stack` (output identical for any count).

    Returns
    -------
    ndarray, shape (Z, H, W), float32
    """
    config = config or FusionConfig()
    stack = _checked_stack(volumes, ndim=4, what="volumes (K, Z, H, W)")
    fused, _, _, _ = _fuse(stack, config, extractor, saliency_histograms, threads, keep_weights=False)
    return fused


def _checked_stack(array: np.ndarray, *, ndim: int, what: str) -> np.ndarray:
    if isinstance(array, (list, tuple)):
        shapes = {np.shape(a) for a in array}
        if len(shapes) > 1:
            raise InputError(f"sources have different shapes: {', '.join(str(s) for s in sorted(shapes))}")
    stack = np.asarray(array)
    if stack.ndim != ndim:
        raise InputError(f"{what} expected, got an array of shape {stack.shape}")
    if stack.shape[0] < 2:
        raise InputError(f"fusion needs at least 2 sources, got {stack.shape[0]}")
    if min(stack.shape[-2:]) < 1:
        raise InputError(f"empty images of shape {stack.shape[-2:]}")
    if not np.issubdtype(stack.dtype, np.floating):
        raise InputError(f"sources must be float in [0, 1], got dtype {stack.dtype}")
    stack = stack.astype(np.float32, copy=False)
    low, high = float(stack.min()), float(stack.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise InputError("sources contain NaN or infinite values")
    if low < -_RANGE_SLACK or high > 1.0 + _RANGE_SLACK:
        raise InputError(f"sources must lie in [0, 1], got values in [{low:.6g}, {high:.6g}]")
    if low < 0.0 or high > 1.0:
        # Float round-off from an upstream resampling or mapping step.
        stack = np.clip(stack, 0.0, 1.0)
    return stack


def _fuse(
    stack: np.ndarray,
    config: FusionConfig,
    extractor: ActivityExtractor | None,
    saliency_histograms: np.ndarray | None,
    threads: int = 1,
    *,
    keep_weights: bool = True,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, float]]:
    """Fuse a (K, N, H, W) stack; returns fused (N, H, W) and weights (K, N, H, W).

    Without ``keep_weights`` the pyramid rule builds neither weight stack
    (both None): nobody reads them then.
    """
    k, n, h, w = stack.shape
    if config.uses_cnn and extractor is None:
        raise FusionError(
            "this configuration needs an activity extractor (or use decision 'energy' / detail_rule 'max-abs')"
        )
    if saliency_histograms is not None and np.shape(saliency_histograms) != (k, config.saliency_levels):
        raise InputError(
            f"saliency_histograms must have shape {(k, config.saliency_levels)}, got {np.shape(saliency_histograms)}"
        )
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    if config.rule == "pyramid":
        return _fuse_pyramid(stack, config, extractor, keep_weights, int(threads))
    by_source = _SourceGroups(k, int(threads), n * h * w)
    timings = dict.fromkeys(STAGES, 0.0)
    clock = time.perf_counter

    t0 = clock()
    base, detail = by_source.map(
        lambda group: decompose(stack[group], config.decomposition, config.decomposition_size, config.decomposition_eps)
    )
    t1 = clock()
    timings["decomposition"] = t1 - t0

    # Both weight refinements are guided by the sources: their window
    # statistics are computed once per radius (once in all when r_b == r_d),
    # per group of sources.
    guides = [GuideWindows(stack[group]) for group in by_source.groups]

    def refine(weights: np.ndarray, radius: int, eps: float, clip: bool = False) -> np.ndarray:
        """Guided-filter each source's weights by the source, then renormalise over K (eqs. 6-7, 12)."""
        (filtered,) = by_source.map(
            lambda group, index: (guides[index].filter(weights[group], radius, eps, dtype=np.float32),),
            with_index=True,
        )
        return normalise_sum(filtered, clip=clip)

    if config.base_rule == "saliency":
        base_w = saliency_weights(stack, config.saliency_levels, config.saliency_normalisation, saliency_histograms)
        base_w = refine(base_w, config.r_b, config.eps_b)
    else:
        # Refining constant 1/K weights by a guided filter returns them unchanged.
        base_w = average_weights(stack.shape)
    t2 = clock()
    timings["base_weights"] = t2 - t1

    if config.detail_rule == "cnn":
        if config.features_on == "source":
            cnn_input = stack
        else:
            # Detail layers are zero-mean; shown to the CNN around mid-grey so
            # they stay in the extractor's [0, 1] input range.
            cnn_input = np.clip(detail + np.float32(0.5), 0.0, 1.0)
        activity = _activity(extractor, cnn_input.reshape(k * n, h, w))
        t3 = clock()
        timings["cnn"] = t3 - t2
        detail_w = upsample_nearest(
            softmax_weights(activity.reshape((k, n) + activity.shape[-2:]), config.detail_temperature),
            (h, w),
            extractor.stride,
        )
        if config.features_on == "source":
            detail_w = refine(detail_w, config.r_d, config.eps_d, clip=config.clip_detail_weights)
        else:
            # The authors' code: no detail guided filter; softmax already sums to 1.
            detail_w = np.ascontiguousarray(detail_w)
    else:
        t3 = clock()
        detail_w = refine(max_abs_weights(detail), config.r_d, config.eps_d, clip=config.clip_detail_weights)
    t4 = clock()
    timings["detail_weights"] = t4 - t3

    fused = np.einsum("knhw,knhw->nhw", base_w, base, dtype=np.float32)
    fused += np.einsum("knhw,knhw->nhw", detail_w, detail, dtype=np.float32)
    # Clip to the sources' range (paper III-D: remove out-of-range values).
    if config.envelope_clip:
        # Per pixel; inside the global range below, so that clip would change nothing more.
        np.clip(fused, stack.min(axis=0), stack.max(axis=0), out=fused)
    else:
        low = stack.min(axis=(0, 2, 3))[:, None, None]
        high = stack.max(axis=(0, 2, 3))[:, None, None]
        np.clip(fused, low, high, out=fused)
    timings["reconstruction"] = clock() - t4
    return fused, base_w, detail_w, timings


def _fuse_pyramid(
    stack: np.ndarray, config: FusionConfig, extractor: ActivityExtractor | None, keep_weights: bool, threads: int
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None, dict[str, float]]:
    """The pyramid rule on a (K, N, H, W) stack; returns fused (N, H, W) and weights (K, N, H, W).

    Without ``keep_weights`` neither weight stack is built (both None). The
    decision and the blending are compiled kernels working on row ranges, shared
    among ``threads`` threads when the stack is large enough to pay for them.
    """
    k, n, h, w = stack.shape
    timings = dict.fromkeys(PYRAMID_STAGES, 0.0)
    clock = time.perf_counter
    parts = min(int(threads), max(1, (k * n * h * w) // _MIN_PIXELS_PER_THREAD))
    executor = _pool(parts) if parts > 1 else None
    t0 = clock()
    cells = stride = None
    if config.decision == "cnn-energy":
        cells = _activity(extractor, stack.reshape(k * n, h, w))
        cells = cells.reshape((k, n) + cells.shape[-2:])
        stride = extractor.stride
    t1 = clock()
    timings["cnn"] = t1 - t0
    chosen = decision_indices(stack, config.decision_radius, cells, stride, parts=parts, executor=executor)
    decided = one_hot(chosen, k) if keep_weights else None
    t2 = clock()
    timings["decision"] = t2 - t1
    fused, base_w = blend_decisions(
        stack,
        chosen,
        config.pyramid_levels,
        coarsest="max" if config.coarsest_band == "max" else "weights",
        envelope=config.envelope_clip,
        keep_weights=keep_weights,
        parts=parts,
        executor=executor,
    )
    timings["blending"] = clock() - t2
    return fused, base_w, decided, timings


# Thread pools by size, shared by all fusions of the process (starting
# threads on every call would cost about as much as a small fusion).
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(size: int) -> ThreadPoolExecutor:
    with _pools_lock:
        if size not in _pools:
            _pools[size] = ThreadPoolExecutor(max_workers=size, thread_name_prefix="medfuse-core")
        return _pools[size]


# A group (thread) needs at least this many pixels of work to pay for itself:
# SciPy's 1-D filters and the row-by-row running sums hold the GIL part of
# the time, so on 2 cores two 256x256 sources fused ~10% slower on 2 threads
# than on 1, and two 512x512 sources 1.2-1.3x faster (docs/bench-fuse2d.md).
# The pyramid rule shares rows among threads from the same size on: two
# 512x512 sources took 2.02 ms on 2 threads against 3.07 on 1, while two
# 256x256 ones gained nothing sure (0.59-1.03 ms against 0.67-0.88 in three
# runs at load 1.9-2.8, and ~0.3 ms more CPU).
_MIN_PIXELS_PER_THREAD = 1 << 17


class _SourceGroups:
    """The K sources split into contiguous groups, one per thread.

    At most ``threads`` groups, at most K, and each with at least
    ``_MIN_PIXELS_PER_THREAD`` pixels. Per-source stages run once per group
    and their results are joined along axis 0; every image goes through
    exactly the same operations whatever the grouping, so results do not
    depend on the number of threads.
    """

    def __init__(self, k: int, threads: int, pixels_per_source: int) -> None:
        worthwhile = max(1, (k * pixels_per_source) // _MIN_PIXELS_PER_THREAD)
        bounds = np.linspace(0, k, min(threads, k, worthwhile) + 1).round().astype(int)
        self.groups = [slice(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])]

    def map(self, stage, *, with_index: bool = False) -> tuple[np.ndarray, ...]:
        """Run ``stage(group[, index])`` (returning a tuple of (k_group, ...) arrays) per group; join along K."""
        calls = [(group, index) if with_index else (group,) for index, group in enumerate(self.groups)]
        if len(calls) == 1:
            return stage(*calls[0])
        parts = list(_pool(len(calls)).map(lambda call: stage(*call), calls))
        return tuple(np.concatenate(pieces, axis=0) for pieces in zip(*parts))


def _activity(extractor: ActivityExtractor, images: np.ndarray) -> np.ndarray:
    """Run the extractor and check its output against the protocol."""
    activity = np.asarray(extractor.activity(np.ascontiguousarray(images, dtype=np.float32)))
    name = getattr(extractor, "name", type(extractor).__name__)
    n, h, w = images.shape
    stride = getattr(extractor, "stride", None)
    if stride is None:
        cells_ok = activity.ndim == 3 and 1 <= activity.shape[1] <= h and 1 <= activity.shape[2] <= w
    else:
        cells_ok = activity.shape[1:] == (-(-h // stride), -(-w // stride))
    if activity.ndim != 3 or activity.shape[0] != n or not cells_ok:
        raise FusionError(
            f"extractor {name} (stride {stride}) returned activity of shape {activity.shape} for input {images.shape}"
        )
    if not np.all(np.isfinite(activity)):
        raise FusionError(f"extractor {name} returned NaN or infinite activity")
    return activity
