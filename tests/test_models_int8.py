"""The shipped int8 trunk: rebuilt byte for byte from the float32 trunk and the committed ranges.

Needs onnx (the export extra; onnxruntime's quantiser imports it), not torch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx is an export-time extra (pip install 'medfuse[export]')")

import onnxruntime  # noqa: E402

from medfuse.features.export.quantise import (  # noqa: E402
    RANGES_SUFFIX,
    _widen,
    calibration_ranges,
    quantise_trunk,
    read_ranges,
)
from medfuse.features.manifest import read_manifest, shipped_manifest_path  # noqa: E402


@pytest.fixture(scope="module")
def manifest():
    return read_manifest(shipped_manifest_path())


def test_int8_trunk_is_rebuilt_byte_for_byte_from_the_committed_ranges(manifest, tmp_path):
    int8 = manifest.models["efficientnet-lite0-int8"]
    fp32 = manifest.models["efficientnet-lite0"]
    for depth, row in int8.depths.items():
        ranges_path = int8.path(depth).with_name(row.file + RANGES_SUFFIX)
        quantiser = json.loads(ranges_path.read_text())["onnxruntime"]
        if quantiser != onnxruntime.__version__:
            pytest.skip(f"the shipped int8 file was quantised by onnxruntime {quantiser}, this is {onnxruntime.__version__}")
        ranges = read_ranges(ranges_path, model_sha256=fp32.depths[depth].sha256)
        assert quantise_trunk(fp32.path(depth), ranges, tmp_path / row.file) == row.sha256


def test_ranges_of_another_float32_file_are_refused(manifest):
    int8 = manifest.models["efficientnet-lite0-int8"]
    row = int8.depths[int8.default_depth]
    with pytest.raises(ValueError, match="recalibrate"):
        read_ranges(int8.path(row.depth).with_name(row.file + RANGES_SUFFIX), model_sha256="0" * 64)


@pytest.mark.parametrize("value, up, expected", [
    (101.04, True, 102.0), (101.04, False, 101.0), (-93.31, False, -93.4), (-93.31, True, -93.3),
    (0.0, True, 0.0), (6.0, True, 6.0), (0.0012345, True, 0.00124),
])
def test_ranges_are_widened_to_three_significant_digits(value, up, expected):
    assert _widen(value, up) == pytest.approx(expected, rel=1e-12)


def test_calibration_covers_every_quantised_tensor_and_contains_zero(manifest):
    """Calibrating on two synthetic images gives a range per tensor, each containing 0, widened outward."""
    fp32 = manifest.models["efficientnet-lite0"]
    rng = np.random.default_rng(0)
    images = [rng.random((40, 48), dtype=np.float32), np.zeros((32, 32), np.float32)]
    ranges = calibration_ranges(fp32.path(3), images, fp32.normalisation)
    committed = json.loads(manifest.models["efficientnet-lite0-int8"].path(3).with_name(
        "efficientnet-lite0-int8-d3.onnx" + RANGES_SUFFIX).read_text())["ranges"]
    assert set(ranges) == set(committed)
    for low, high in ranges.values():
        assert low <= 0.0 <= high
        assert float(f"{low:.3g}") == low and float(f"{high:.3g}") == high
