"""Staged volumes: slab-wise resampling and mapping into files equal the whole-volume path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.volume.intensity import choose_mapping, map_to_unit
from medfuse.volume.model import Volume
from medfuse.volume.resampling import resample_onto, resample_slabs
from medfuse.volume.staging import StagedVolumes, stage_on_grid

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"


def _volume(name: str) -> Volume:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SAMPLE / name)))
    return Volume(sitk.Cast(reader.Execute(), sitk.sitkFloat32), modality="MR", label=name)


@pytest.fixture(scope="module")
def volumes():
    return _volume("series1_t1"), _volume("series2_synthetic_contrast")


def _turn(fixed: Volume) -> sitk.Euler3DTransform:
    turn = sitk.Euler3DTransform()
    turn.SetCenter(fixed.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.image.GetSize()]))
    turn.SetRotation(0.02, -0.03, 0.08)
    turn.SetTranslation((4.0, -6.5, 2.5))
    return turn


@pytest.mark.parametrize("slab", [1, 7, 1000])
def test_slabs_equal_the_whole_volume_resampling(volumes, slab):
    fixed, moving = volumes
    turn = _turn(fixed)
    moved, coverage = resample_onto(fixed, moving, turn)
    whole, covered = sitk.GetArrayFromImage(moved.image), sitk.GetArrayFromImage(coverage).astype(bool)
    pieces = list(resample_slabs(fixed.image, moving, turn, slab))
    assert [p[0] for p in pieces] == list(range(0, whole.shape[0], slab))
    np.testing.assert_array_equal(np.concatenate([p[2] for p in pieces]), whole)
    np.testing.assert_array_equal(np.concatenate([p[3] for p in pieces]), covered)
    assert not covered.all()  # the turn moves part of the grid outside the moving field of view


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
@pytest.mark.parametrize("with_nan", [False, True])
def test_slab_coverage_is_the_nearest_neighbour_field_of_view(volumes, interpolation, with_nan):
    # The slabs take their coverage from NaN outside the field of view (one resampling, issue 14); it must be
    # resample_onto's resampled ones, also for moving voxels that are NaN themselves (then resampled apart).
    fixed, moving = volumes
    if with_nan:
        values = sitk.GetArrayFromImage(moving.image)
        values[values.shape[0] // 2, :5] = np.nan
        image = sitk.GetImageFromArray(values)
        image.CopyInformation(moving.image)
        moving = Volume(image)
    rng = np.random.default_rng(3)
    for _ in range(3):
        turn = _turn(fixed)
        turn.SetRotation(*rng.uniform(-0.3, 0.3, 3))
        turn.SetTranslation(tuple(rng.uniform(-30.0, 30.0, 3)))
        moved, coverage = resample_onto(fixed, moving, turn, interpolation=interpolation)
        pieces = list(resample_slabs(fixed.image, moving, turn, 7, interpolation=interpolation))
        np.testing.assert_array_equal(np.concatenate([p[3] for p in pieces]),
                                      sitk.GetArrayViewFromImage(coverage).astype(bool))
        np.testing.assert_array_equal(np.concatenate([p[2] for p in pieces]), sitk.GetArrayViewFromImage(moved.image))


def test_slabs_of_the_same_grid_are_the_voxels_themselves(volumes):
    fixed, _ = volumes
    pieces = list(resample_slabs(fixed.image, fixed, sitk.Euler3DTransform(), 5))
    np.testing.assert_array_equal(np.concatenate([p[2] for p in pieces]), sitk.GetArrayFromImage(fixed.image))
    assert all(p[3].all() for p in pieces)


def test_staged_sources_equal_the_whole_volume_pipeline(volumes, tmp_path):
    """K = 3: fixed, moved, and the fixed again through a turn; mapped by their own voxels' percentiles."""
    fixed, moving = volumes
    turn = _turn(fixed)
    movers = [(moving, turn), (fixed, turn.GetInverse())]
    mappings = [choose_mapping(v) for v in (fixed, moving, fixed)]
    staged = stage_on_grid(tmp_path, fixed, movers, mappings, slab_slices=6)
    assert staged.shape == (3, *fixed.shape_zyx)
    stack, cover = StagedVolumes.open(tmp_path).read(0, fixed.shape_zyx[0])
    expected = [map_to_unit(fixed)[0]]
    for (volume, transform), mapping in zip(movers, mappings[1:]):
        moved, coverage = resample_onto(fixed, volume, transform)
        expected_cover = sitk.GetArrayFromImage(coverage).astype(bool)
        expected.append(mapping.apply(sitk.GetArrayFromImage(moved.image)))
        np.testing.assert_array_equal(cover[len(expected) - 1], expected_cover)
    np.testing.assert_array_equal(stack, np.stack(expected))
    assert cover[0].all()
    assert mappings[1] == map_to_unit(moving)[1]  # the moving mapping is the one of its own voxels
    np.testing.assert_array_equal(staged.source(1), expected[1])
    assert not staged.fused().any()  # the output starts as zeros


def test_fused_slices_read_one_slice_at_a_time_and_writes_are_checked(tmp_path):
    staged = StagedVolumes.create(tmp_path, 2, (4, 3, 5))
    values = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    staged.write_fused(1, values)
    slices = staged.fused_slices()
    assert len(slices) == 4
    np.testing.assert_array_equal(slices[2], values[1])
    np.testing.assert_array_equal(slices[-1], np.zeros((3, 5), np.float32))
    np.testing.assert_array_equal(np.stack(list(slices)), staged.fused())
    with pytest.raises(IndexError):
        slices[4]
    with pytest.raises(InputError, match="do not fit"):
        staged.write_fused(3, values)  # would run past the last slice
    with pytest.raises(InputError, match="out of range"):
        staged.write_source(2, 0, values)
    np.testing.assert_array_equal(np.load(tmp_path / "fused.npy")[1:3], values)  # plain .npy files
