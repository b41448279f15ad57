"""BT.601 (full-range) YCbCr conversion."""

from __future__ import annotations

import numpy as np
import pytest

from medfuse.core.colour import is_grey_rgb, rgb_to_ycbcr, ycbcr_to_rgb


def test_ycbcr_round_trip_is_exact_to_1e_6():
    rng = np.random.default_rng(0)
    rgb = rng.random((64, 64, 3)).astype(np.float32)
    assert np.max(np.abs(ycbcr_to_rgb(rgb_to_ycbcr(rgb)) - rgb)) < 1e-6


def test_round_trip_on_every_8_bit_primary_and_grey():
    levels = np.arange(256, dtype=np.float32) / 255
    zeros = np.zeros_like(levels)
    rgb = np.concatenate(
        [np.stack([levels, zeros, zeros], -1), np.stack([zeros, levels, zeros], -1), np.stack([zeros, zeros, levels], -1), np.stack([levels] * 3, -1)]
    )
    assert np.max(np.abs(ycbcr_to_rgb(rgb_to_ycbcr(rgb)) - rgb)) < 1e-6


def test_known_bt601_values():
    white, red, blue = rgb_to_ycbcr(np.array([[1, 1, 1], [1, 0, 0], [0, 0, 1]], dtype=np.float32))
    assert white == pytest.approx([1.0, 0.5, 0.5], abs=1e-6)
    assert red == pytest.approx([0.299, 0.5 - 0.168736, 1.0], abs=1e-6)
    assert blue == pytest.approx([0.114, 1.0, 0.5 - 0.081312], abs=1e-6)


def test_grey_rgb_is_recognised_only_when_channels_are_identical():
    grey = np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4, 1), 3, axis=2)
    assert is_grey_rgb(grey)
    grey[1, 1, 2] += 1
    assert not is_grey_rgb(grey)
