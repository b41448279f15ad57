"""Every parameter of the fusion method, in one frozen, validated object.

:class:`FusionConfig` holds the defaults medfuse uses; :meth:`FusionConfig.paper`
is the configuration of Lahoud & Süsstrunk, *Fast and Efficient Zero-Learning
Image Fusion*, section IV-D, exactly. The field defaults below are the one
place where medfuse's defaults live. The default rule is not the paper's
two-scale weighting but the pyramid rule (decisive CNN-and-energy maps
blended in a Laplacian pyramid, fused values kept inside the sources'
per-pixel range), chosen from measurements in docs/metrics.md ("A default
beyond the paper"). :meth:`FusionConfig.photo` is the previous default
(two-scale, box 7, r_b 7, ε_b 1e-3, clipped detail weights) with the
envelope clip, the better choice for photographs (IR-visible, multi-focus,
multi-exposure).
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any

from medfuse.errors import InputError

__all__ = ["FusionConfig", "RULES", "COARSEST_BANDS", "DECISIONS", "PRESETS", "DECOMPOSITIONS", "BASE_RULES", "DETAIL_RULES", "FEATURE_INPUTS", "SALIENCY_NORMALISATIONS"]

RULES = ("pyramid", "two-scale")
COARSEST_BANDS = ("max", "decision")
DECISIONS = ("cnn-energy", "energy")
PRESETS = ("default", "paper", "photo")
DECOMPOSITIONS = ("box", "gaussian", "guided")
BASE_RULES = ("saliency", "average")
DETAIL_RULES = ("cnn", "max-abs")
FEATURE_INPUTS = ("source", "detail")
SALIENCY_NORMALISATIONS = ("minmax", "none")

# The paper's configuration (section IV-D and III). Kept separate from the
# field defaults so that changing a default never changes `paper()`.
_PAPER: dict[str, Any] = {
    "rule": "two-scale",
    "envelope_clip": False,
    "decomposition": "box",
    # Box side: not stated in the paper; 45 is `kernel=45` (cv2.blur((45, 45)))
    # in the authors' public code, IVRL/Fast-Zero-Learning-Fusion, Demo.ipynb,
    # fuse_twoscale(). See docs/fusion.md.
    "decomposition_size": 45,
    "decomposition_eps": 0.01,
    "base_rule": "saliency",
    "detail_rule": "cnn",
    "r_b": 45,
    "eps_b": 0.1,
    "r_d": 7,
    "eps_d": 1e-6,
    "features_on": "source",
    "clip_detail_weights": False,
    # The float32 trunk: the shipped default is its int8 quantisation
    # (docs/models.md, "Int8 trunk"), which the paper never had.
    "model": "efficientnet-lite0",
    "depth": None,
    "saliency_levels": 256,
    "saliency_normalisation": "minmax",
    # Eq. 11 is a plain softmax of the activity: temperature 1.
    "detail_temperature": 1.0,
}


@dataclass(frozen=True)
class FusionConfig:
    """Parameters of the two-scale zero-learning fusion.

    Attributes
    ----------
    rule : {'pyramid', 'two-scale'}
        'two-scale': the paper's method (section III): base and detail
        layers with soft saliency / CNN weights refined by guided filters;
        every field below from ``decomposition`` to ``detail_temperature``
        applies to it. 'pyramid' (medfuse's default): at each pixel one
        source decides (``decision``), and the one-hot decision maps blend
        the sources' Laplacian pyramids (``pyramid_levels``) through their
        Gaussian pyramids, so the switch between sources is seamless.
    decision : {'cnn-energy', 'energy'}
        Pyramid rule: the score a source decides a pixel by, its local
        energy (mean of I² over a window of radius ``decision_radius``)
        times its CNN activity ('cnn-energy'), or the energy alone.
    decision_radius : int >= 0
        Pyramid rule: window radius of the local energy.
    pyramid_levels : int >= 1
        Pyramid rule: levels of the blending pyramids (fewer on images too
        small for them).
    coarsest_band : {'max', 'decision'}
        Pyramid rule: the coarsest band (the image low-passed to 1/2^(levels-1)
        of its size) is taken from the source brightest there ('max'), or
        blended by the decision maps like the finer bands.
    envelope_clip : bool
        Keep every fused pixel inside [min_k I_k, max_k I_k] at that pixel.
        Where every source is black the result is black, and an edge cannot
        spread beyond where some source has it (no halos, no thickened
        bone). The paper clips only to the sources' global range.
    decomposition : {'box', 'gaussian', 'guided'}
        Smoothing filter M giving the base layer B = M(I) (paper eq. 1).
    decomposition_size : int, odd
        Window side of the smoothing filter in pixels (radius = size // 2).
        'gaussian' uses sigma = size / 6 truncated at the window; 'guided'
        uses the source as its own guide with ``decomposition_eps``.
    decomposition_eps : float
        ε of the guided-filter decomposition (only for 'guided').
    base_rule : {'saliency', 'average'}
        Base weights: LC histogram saliency (paper III-B) or plain 1/K.
    detail_rule : {'cnn', 'max-abs'}
        Detail weights: softmax of CNN activity (paper III-C) or choose-max of
        |D_k| (the ablation's MAX rule), both refined by the detail guided filter.
    r_b, eps_b : int, float
        Radius and ε of the guided filter refining base weights (paper: 45, 0.1).
    r_d, eps_d : int, float
        Radius and ε of the guided filter refining detail weights (paper: 7, 1e-6).
    features_on : {'source', 'detail'}
        What the CNN sees. 'source': the source images I_k (paper eq. 9).
        'detail': the detail layers D_k, and no detail guided filter — what the
        authors' public code does.
    clip_detail_weights : bool
        Clip guided-filtered detail weights to [0, 1] before renormalising
        (with ε_d = 1e-6 they overshoot; the paper does not clip).
    model, depth : str or None, int or None
        Feature extractor name and depth; None means the shipped default
        (the int8 EfficientNet-Lite0 trunk, at its default depth 3). The
        paper preset names the float32 trunk, ``efficientnet-lite0``.
    saliency_levels : int
        Grey levels the source is quantised to for the saliency histogram
        (paper: 256, i.e. 8-bit).
    saliency_normalisation : {'minmax', 'none'}
        'minmax': each saliency map is scaled to [0, 1] (paper III-B).
        'none': raw mean absolute grey-level difference (authors' code).
    detail_temperature : float > 0
        The CNN activity is divided by it before the softmax over sources
        (paper eq. 11 is temperature 1). The shipped model's activities are
        around 100, so at 1 the softmax is nearly a hard choose-max; larger
        values soften it, and as it grows the detail weights tend to 1/K.
    """

    # The pyramid rule and its parameters: docs/metrics.md, "A default beyond
    # the paper" (47 of 60 medical task x metric cells against average,
    # pixel-max and GFF, against 24 for the previous default).
    rule: str = "pyramid"
    decision: str = "cnn-energy"
    decision_radius: int = 3
    pyramid_levels: int = 4
    coarsest_band: str = "max"
    envelope_clip: bool = True
    decomposition: str = _PAPER["decomposition"]
    # Two-scale rule only. Not the paper's 45: a 45-px box leaves ~72% of the anatomy's variance in
    # the detail layer; 7 with sharper base weights (r_b, eps_b below) wins on
    # QY/QC over 72 medical pairs (docs/metrics.md, "Choosing the default").
    decomposition_size: int = 7
    decomposition_eps: float = _PAPER["decomposition_eps"]
    base_rule: str = _PAPER["base_rule"]
    detail_rule: str = _PAPER["detail_rule"]
    r_b: int = 7  # paper 45 (see decomposition_size)
    eps_b: float = 1e-3  # paper 0.1 (see decomposition_size)
    r_d: int = _PAPER["r_d"]
    eps_d: float = _PAPER["eps_d"]
    features_on: str = _PAPER["features_on"]
    # Not the paper's: clipping measured at least as good on 7 of 8 metrics over
    # the 72 shared medical pairs and stops up-to-5x detail amplification
    # (docs/fusion.md, "Measured quality of the variants").
    clip_detail_weights: bool = True
    model: str | None = None
    depth: int | None = None
    saliency_levels: int = _PAPER["saliency_levels"]
    saliency_normalisation: str = _PAPER["saliency_normalisation"]
    detail_temperature: float = _PAPER["detail_temperature"]

    def __post_init__(self) -> None:
        _choice("rule", self.rule, RULES)
        _choice("decision", self.decision, DECISIONS)
        _choice("coarsest_band", self.coarsest_band, COARSEST_BANDS)
        _integer("decision_radius", self.decision_radius, minimum=0)
        _integer("pyramid_levels", self.pyramid_levels, minimum=1)
        if self.pyramid_levels > 16:
            raise InputError(f"pyramid_levels must be at most 16, got {self.pyramid_levels}")
        _choice("decomposition", self.decomposition, DECOMPOSITIONS)
        _choice("base_rule", self.base_rule, BASE_RULES)
        _choice("detail_rule", self.detail_rule, DETAIL_RULES)
        _choice("features_on", self.features_on, FEATURE_INPUTS)
        _choice("saliency_normalisation", self.saliency_normalisation, SALIENCY_NORMALISATIONS)
        _integer("decomposition_size", self.decomposition_size, minimum=1)
        if self.decomposition_size % 2 != 1:
            raise InputError(f"decomposition_size must be odd (a window side), got {self.decomposition_size}")
        _integer("r_b", self.r_b, minimum=0)
        _integer("r_d", self.r_d, minimum=0)
        _integer("saliency_levels", self.saliency_levels, minimum=2)
        if self.saliency_levels > 65536:
            raise InputError(f"saliency_levels must be at most 65536, got {self.saliency_levels}")
        for name in ("eps_b", "eps_d", "decomposition_eps", "detail_temperature"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < float("inf"):
                raise InputError(f"{name} must be a positive number, got {value!r}")
        for name in ("clip_detail_weights", "envelope_clip"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.model is not None and (not isinstance(self.model, str) or not self.model.strip()):
            raise InputError(f"model must be a model name or None, got {self.model!r}")
        if self.depth is not None:
            _integer("depth", self.depth, minimum=1)

    @classmethod
    def paper(cls) -> FusionConfig:
        """The paper's configuration exactly (box decomposition, r_b=45, ε_b=0.1, r_d=7, ε_d=1e-6)."""
        return cls(**_PAPER)

    @classmethod
    def photo(cls) -> FusionConfig:
        """For photographs: medfuse's previous default (two-scale, box 7, r_b 7, ε_b 1e-3,
        clipped detail weights) with the envelope clip (no halos).

        Better than the pyramid rule on infrared-visible, multi-focus and
        multi-exposure images, where the brighter source is not the
        informative one (docs/metrics.md). It runs the float32 trunk: the
        soft weights of the two-scale rule follow the activity's values, not
        just which source's is larger, and the int8 trunk (calibrated on
        medical slices) cost multi-exposure stacks 0.02 of QG and 0.03 of QY.
        """
        return cls(rule="two-scale", model="efficientnet-lite0")

    @classmethod
    def preset(cls, name: str) -> FusionConfig:
        """The configuration of a preset: 'default', 'paper' or 'photo'."""
        _choice("preset", name, PRESETS)
        return {"default": cls, "paper": cls.paper, "photo": cls.photo}[name]()

    @property
    def uses_cnn(self) -> bool:
        """Whether this configuration runs the feature extractor."""
        if self.rule == "pyramid":
            return self.decision == "cnn-energy"
        return self.detail_rule == "cnn"

    def replace(self, **changes: Any) -> FusionConfig:
        """A copy with ``changes`` applied (validated); unknown names raise InputError."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown fusion parameter(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """All parameters as a plain dict (for provenance records)."""
        return dataclasses.asdict(self)


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InputError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _integer(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
