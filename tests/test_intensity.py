"""map_to_unit: CT windows, MR percentiles, PET SUV checked against the scanner-side SUV factor."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medfuse.errors import InputError
from medfuse.io.dicom.index import scan_folder
from medfuse.io.dicom.read import read_series
from medfuse.io.volumes import load_volume
from medfuse.volume import intensity
from medfuse.volume.intensity import CT_WINDOWS, IntensityMapping, choose_mapping, map_to_unit, parse_window

PET_DIR = "volumes/tcia_CCTH-A01_pet_ct/PET_images"


def test_ct_window_maps_hu_by_definition():
    hu = np.array([-1000.0, 0.0, 40.0, 80.0, 3000.0], dtype=np.float32)
    unit, mapping = map_to_unit(hu, "CT", window="40,80")
    np.testing.assert_allclose(unit, [0.0, 0.0, 0.5, 1.0, 1.0])
    assert mapping.to_dict() == {"modality": "CT", "method": "window", "low": 0.0, "high": 80.0,
                                 "details": {"window": "custom", "centre": 40.0, "width": 80.0}}


@pytest.mark.parametrize("name", sorted(CT_WINDOWS))
def test_ct_presets(name):
    centre, width = CT_WINDOWS[name]
    unit, mapping = map_to_unit(np.array([centre], np.float32), "CT", window=name)
    assert unit[0] == pytest.approx(0.5)
    assert mapping.details["window"] == name and mapping.high - mapping.low == width


def test_ct_default_window_is_soft_tissue_and_recorded():
    _, mapping = map_to_unit(np.zeros(3, np.float32), "CT")
    assert mapping.details["window"] == "soft-tissue"


@pytest.mark.parametrize("bad", ["lung", "40", "a,b", "40,-5", (40, 0)])
def test_bad_windows_are_refused(bad):
    with pytest.raises(InputError):
        parse_window(bad)


def test_inverse_restores_values_inside_the_range():
    values = np.linspace(-150, 230, 101, dtype=np.float32)
    unit, mapping = map_to_unit(values, "CT", window=(40, 400))
    np.testing.assert_allclose(mapping.inverse(unit), values, atol=1e-3)
    assert mapping.inverse(unit).dtype == np.float32


def test_mr_percentiles_clip_half_a_percent_each_side(shared_data):
    volume = load_volume(shared_data / "volumes/niivue_MR_Gd/MR_Gd.nii.gz")
    values = sitk.GetArrayViewFromImage(volume.image)
    unit, mapping = map_to_unit(volume, "MR")
    assert unit.dtype == np.float32 and unit.shape == values.shape
    assert 0.0 <= unit.min() and unit.max() <= 1.0
    assert mapping.method == "percentile" and mapping.details["percentiles"] == [0.5, 99.5]
    above = np.mean(values > mapping.high)
    assert 0.002 < above <= 0.005  # 0.5 % clipped at the top (less with ties)


def test_pet_uses_suv_matching_the_scanner_side_factor(shared_data):
    folder = shared_data / PET_DIR
    index = scan_folder(folder)
    (pet,) = [s for s in index.series if s.modality == "PT"]
    volume = read_series(pet)
    unit, mapping = map_to_unit(volume)
    # The folder ships a Real World Value Mapping object computed by QIICR's
    # Slicer SUVFactorCalculator: an independent SUVbw factor for this series.
    (rwv,) = [s for s in index.series if s.modality == "RWV"]
    ds = pydicom.dcmread(rwv.instances[0].path)
    item = ds.ReferencedImageRealWorldValueMappingSequence[0].RealWorldValueMappingSequence[0]
    assert "body weight" in item.MeasurementUnitsCodeSequence[0].CodeMeaning
    assert mapping.method == "suv"
    assert mapping.details["suv_factor"] == pytest.approx(float(item.RealWorldValueSlope), rel=5e-6)
    assert mapping.details["suv_range"] == [0.0, 10.0]
    assert mapping.high * mapping.details["suv_factor"] == pytest.approx(10.0)
    assert 0.0 <= unit.min() and unit.max() <= 1.0


def test_pet_without_suv_facts_falls_back_to_percentiles_and_says_why():
    values = np.arange(1000, dtype=np.float32)
    unit, mapping = map_to_unit(values, "PT")
    assert mapping.method == "percentile"
    assert mapping.details["suv_not_used"].startswith("no DICOM header facts")


def test_constant_volume_is_refused():
    with pytest.raises(InputError, match="empty intensity range"):
        map_to_unit(np.full(10, 7.0, np.float32), "MR")


def test_mapping_validates_its_range():
    with pytest.raises(InputError):
        IntensityMapping("MR", "percentile", 5.0, 5.0)


def test_output_stays_in_unit_range_with_non_finite_input():
    values = np.array([np.nan, np.inf, -np.inf, 0.0, 1000.0], dtype=np.float32)
    unit, _ = map_to_unit(values, "MR", window=(500, 1000))
    np.testing.assert_array_equal(unit, [0.0, 1.0, 0.0, 0.0, 1.0])


def test_percentiles_are_exact_over_the_finite_voxels_across_slabs(shared_data):
    # The MR volume spans several 1 Mi-voxel slabs; sprinkle non-finite voxels over it.
    volume = load_volume(shared_data / "volumes/niivue_MR_Gd/MR_Gd.nii.gz")
    values = sitk.GetArrayFromImage(volume.image)
    assert values.size > 2 * intensity.SLAB_VOXELS
    values.flat[::101] = np.nan
    values.flat[50::997] = np.inf
    values.flat[70::1009] = -np.inf
    before = values.copy()
    unit, mapping = map_to_unit(values, "MR", percentiles=(2.0, 98.0))
    finite = before[np.isfinite(before)]
    assert (mapping.low, mapping.high) == _linear_percentiles(finite, (2.0, 98.0))
    np.testing.assert_allclose((mapping.low, mapping.high), np.percentile(finite, [2.0, 98.0]), rtol=1e-6)
    assert choose_mapping(values, "MR", percentiles=(2.0, 98.0)) == mapping
    np.testing.assert_array_equal(values, before)  # the caller's array is not touched
    expected = np.clip((before - np.float32(mapping.low)) * np.float32(1 / (mapping.high - mapping.low)), 0, 1)
    expected[np.isnan(before)] = 0.0
    expected[before == np.inf] = 1.0
    expected[before == -np.inf] = 0.0
    np.testing.assert_array_equal(unit, expected)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.float64])
def test_mapping_needs_about_the_output_size_in_memory(dtype):
    # numpy allocations are traced: a float64 or masked full-size copy would show
    # (the earlier code needed output + mask + finite copy, about 2.25x the output).
    values = (np.random.default_rng(5).standard_normal((96, 256, 256)) * 300).astype(dtype)
    output_bytes = values.size * 4
    tracemalloc.start()
    try:
        unit, mapping = map_to_unit(values, "MR")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert mapping.method == "percentile" and unit.dtype == np.float32
    assert peak < output_bytes * 1.5


def _linear_percentiles(finite: np.ndarray, percentiles) -> tuple[float, ...]:
    """NumPy's "linear" percentiles from the fully sorted values, interpolated in float64 (the reference)."""
    ordered = np.sort(finite.astype(np.float32).ravel()).astype(np.float64)
    out = []
    for p in percentiles:
        h = (ordered.size - 1) * p / 100.0
        below = int(np.floor(h))
        above = min(below + 1, ordered.size - 1)
        out.append(float(ordered[below] + (ordered[above] - ordered[below]) * (h - below)))
    return tuple(out)


def test_percentile_selection_is_exact_through_every_refinement_branch(monkeypatch):
    """Tiny bins and gather limit force the histogram refinement to narrow, recurse and hit degenerate bins."""
    monkeypatch.setattr(intensity, "SELECT_BINS", 8)
    monkeypatch.setattr(intensity, "SELECT_GATHER_LIMIT", 50)
    monkeypatch.setattr(intensity, "SELECT_SLAB_VOXELS", 333)
    rng = np.random.default_rng(11)
    for trial in range(40):
        n = int(rng.integers(1, 5000))
        values = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3)).astype(np.float32)
        if trial % 3 == 0:
            values = np.round(values)  # many ties
        if trial % 4 == 1:
            values[: n // 2] = values.min()  # a huge bin of one value, like air or zero padding
        for percentiles in ((0.5, 99.5), (0.0, 100.0), (2.0, 98.0), (49.0, 51.0)):
            expected = _linear_percentiles(values, percentiles)
            if expected[1] > expected[0]:  # else the mapping widens to (min, max), tested elsewhere
                mapping = intensity._percentile_mapping(values, "MR", percentiles)
                assert (mapping.low, mapping.high) == expected
