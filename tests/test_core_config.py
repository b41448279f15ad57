"""FusionConfig: the paper's values, validation, replace()."""

from __future__ import annotations

import pytest

from medfuse.core.config import FusionConfig
from medfuse.errors import InputError


def test_paper_configuration_holds_the_papers_parameters():
    paper = FusionConfig.paper()
    assert (paper.decomposition, paper.base_rule, paper.detail_rule, paper.features_on) == ("box", "saliency", "cnn", "source")
    assert (paper.r_b, paper.eps_b, paper.r_d, paper.eps_d) == (45, 0.1, 7, 1e-6)
    assert paper.saliency_levels == 256
    assert paper.clip_detail_weights is False
    assert paper.detail_temperature == 1.0  # eq. 11 is a plain softmax
    # Box side from the authors' public code (not stated in the paper).
    assert paper.decomposition_size == 45


def test_config_is_frozen_and_replace_returns_a_validated_copy():
    config = FusionConfig()
    changed = config.replace(detail_rule="max-abs", r_b=30)
    assert (changed.detail_rule, changed.r_b) == ("max-abs", 30)
    assert config.detail_rule == FusionConfig().detail_rule
    with pytest.raises(Exception):
        config.r_b = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"base_rule": "max"},
        {"detail_rule": "vgg"},
        {"decomposition": "median"},
        {"features_on": "both"},
        {"r_b": -1},
        {"r_d": 2.5},
        {"eps_d": 0},
        {"eps_b": -0.1},
        {"decomposition_size": 44},
        {"saliency_levels": 1},
        {"depth": 0},
        {"model": ""},
        {"clip_detail_weights": "yes"},
        {"detail_temperature": 0},
        {"detail_temperature": -2.0},
        {"detail_temperature": float("nan")},
        {"detail_temperature": float("inf")},
        {"detail_temperature": True},
        {"no_such_parameter": 1},
    ],
)
def test_bad_parameters_are_refused_with_an_input_error(changes):
    with pytest.raises(InputError):
        FusionConfig().replace(**changes)


def test_to_dict_lists_every_parameter():
    data = FusionConfig.paper().to_dict()
    assert data["eps_d"] == 1e-6 and data["model"] == "efficientnet-lite0"  # the float32 trunk, not the int8 default
    assert FusionConfig(**data) == FusionConfig.paper()
