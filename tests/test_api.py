"""medfuse.fuse: dtype scaling, colour handling, errors, the shipped model end to end."""

from __future__ import annotations

import numpy as np
import pytest

import medfuse
from medfuse.api import default_extractor
from medfuse.core.colour import rgb_to_ycbcr
from medfuse.core.config import FusionConfig
from medfuse.core.fusion import fuse_stack
from medfuse.errors import InputError
from medfuse.io.images import read_image

MAX_ABS = FusionConfig.paper().replace(detail_rule="max-abs")


@pytest.fixture(scope="module")
def pet_mri(shared_data):
    folder = shared_data / "pairs2d/pet-mri/ivrl_1"
    return read_image(folder / "a.png"), read_image(folder / "b.png")


@pytest.fixture(scope="module")
def ct_mri(shared_data):
    folder = shared_data / "pairs2d/ct-mri/ivrl_1"
    return read_image(folder / "a.png"), read_image(folder / "b.png")


def test_default_fusion_uses_the_shipped_model(ct_mri):
    result = medfuse.fuse(list(ct_mri))
    assert result.extractor_name and "@" in result.extractor_name
    assert result.fused.shape == ct_mri[0].shape and result.fused.dtype == np.float32
    assert 0.0 <= result.fused.min() and result.fused.max() <= 1.0
    assert result.config == FusionConfig()


def test_uint8_uint16_and_float_inputs_give_the_same_fusion(ct_mri):
    a, b = ct_mri
    as_uint8 = medfuse.fuse([a, b], config=MAX_ABS).fused
    as_uint16 = medfuse.fuse([a.astype(np.uint16) * 257, b.astype(np.uint16) * 257], config=MAX_ABS).fused
    as_float = medfuse.fuse([a / 255.0, b / 255.0], config=MAX_ABS).fused
    assert np.max(np.abs(as_uint8 - as_uint16)) < 1e-6 and np.max(np.abs(as_uint8 - as_float)) < 1e-6


def test_grey_plus_colour_keeps_the_colour_images_chroma(pet_mri):
    mri, pet = pet_mri
    assert mri.ndim == 2 and pet.ndim == 3
    result = medfuse.fuse([mri, pet])
    assert result.fused.shape == pet.shape
    fused_ycbcr = rgb_to_ycbcr(result.fused)
    pet_ycbcr = rgb_to_ycbcr(pet / 255.0)
    inside = (result.fused > 0.02).all(axis=-1) & (result.fused < 0.98).all(axis=-1)  # not clipped by RGB gamut
    assert np.max(np.abs(fused_ycbcr[inside, 1:] - pet_ycbcr[inside, 1:])) < 1e-4
    # The luma is the core's fusion of the MRI and the PET luma.
    lumas = np.stack([mri / 255.0, pet_ycbcr[..., 0]]).astype(np.float32)
    expected = fuse_stack(lumas, FusionConfig(), default_extractor()).fused
    assert np.max(np.abs(fused_ycbcr[inside, 0] - expected[inside])) < 1e-4


def test_equal_channel_rgb_is_fused_as_grey(ct_mri):
    a, b = ct_mri
    grey = medfuse.fuse([a, b], config=MAX_ABS).fused
    rgb = medfuse.fuse([np.repeat(a[..., None], 3, axis=2), b], config=MAX_ABS).fused
    assert rgb.ndim == 2 and np.array_equal(grey, rgb)


def test_two_colour_images_average_their_chroma(shared_data):
    folder = shared_data / "pairs2d/multifocus/lytro_01"
    a, b = read_image(folder / "a.jpg")[:128, :128], read_image(folder / "b.jpg")[:128, :128]
    fused = medfuse.fuse([a, b], config=MAX_ABS).fused
    expected = (rgb_to_ycbcr(a / 255.0)[..., 1:] + rgb_to_ycbcr(b / 255.0)[..., 1:]) / 2
    inside = (fused > 0.02).all(axis=-1) & (fused < 0.98).all(axis=-1)
    assert np.max(np.abs(rgb_to_ycbcr(fused)[inside, 1:] - expected[inside])) < 1e-4


@pytest.mark.parametrize(
    ("images", "message"),
    [
        ([np.zeros((8, 8))], "at least two"),
        ([np.zeros((8, 8)), np.zeros((8, 9))], "same size"),
        ([np.zeros((8, 8)), np.full((8, 8), 1.5)], r"\[0, 1\]"),
        ([np.zeros((8, 8)), np.full((8, 8), np.nan)], "NaN"),
        ([np.zeros((8, 8)), np.zeros((8, 8, 4))], "shape"),
        ([np.zeros((8, 8)), np.zeros((8, 8), bool)], "dtype"),
        (np.zeros((8, 8, 3)), "one array"),
    ],
)
def test_bad_inputs_raise_one_line_input_errors(images, message):
    with pytest.raises(InputError, match=message) as info:
        medfuse.fuse(images, config=MAX_ABS)
    assert "\n" not in str(info.value)


def test_a_k_by_h_by_w_array_is_k_images(ct_mri):
    stacked = medfuse.fuse(np.stack(ct_mri), config=MAX_ABS).fused
    listed = medfuse.fuse(list(ct_mri), config=MAX_ABS).fused
    assert np.array_equal(stacked, listed)
