"""Int8 trunks: static quantisation of an exported float32 trunk (export time; needs onnx).

The run-time CNN's cost is its convolutions. onnxruntime runs int8
convolutions about twice as fast as float32 ones on a CPU (measured in
docs/models.md), and the fusion only ranks the activity of one source
against another, so the quantised trunk moves the fused images by a few
grey levels on a few per cent of the pixels (docs/models.md, "Int8 trunk").

Two steps, so that the shipped file can be rebuilt byte for byte without
the calibration data:

1. :func:`calibration_ranges` runs the float32 trunk over calibration
   images (medical slices) and records each quantised tensor's [min, max],
   widened to three significant digits (a last-bit difference in a float32
   result on another CPU then cannot change a range, hence the file).
   The ranges are committed beside the model (``<file>.ranges.json``).
2. :func:`quantise_trunk` writes the int8 trunk from the float32 file and
   those ranges: QDQ format, per-channel symmetric int8 weights with
   ``reduce_range`` (7-bit: onnxruntime's u8s8 kernels cannot saturate on
   CPUs without VNNI), uint8 activations.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from medfuse.features.manifest import Normalisation

__all__ = ["calibration_ranges", "quantise_trunk", "read_ranges", "write_ranges", "RANGES_SUFFIX"]

RANGES_SUFFIX = ".ranges.json"
_DIGITS = 3


def _widen(value: float, up: bool) -> float:
    """*value* rounded away from the inside of the range to ``_DIGITS`` significant digits."""
    if value == 0.0 or not math.isfinite(value):
        return float(value)
    step = 10.0 ** (math.floor(math.log10(abs(value))) - (_DIGITS - 1))
    rounded = (math.ceil if up else math.floor)(value / step) * step
    return float(f"{rounded:.{_DIGITS}g}")


def calibration_ranges(model: Path, images: Iterable[np.ndarray], normalisation: Normalisation) -> dict[str, list[float]]:
    """Min/max of every tensor the quantiser will quantise, over *images*, widened.

    Parameters
    ----------
    model : Path
        The float32 ONNX trunk (input ``(N, 3, H, W)``).
    images : iterable of ndarray, shape (H, W), float in [0, 1]
        Grey calibration images (any sizes); replicated to 3 channels and
        normalised as the run-time extractor does.
    normalisation : Normalisation
        The model's input normalisation.

    Returns
    -------
    dict
        Tensor name -> ``[low, high]`` (floats, 3 significant digits, low <= 0 <= high).
    """
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    class Reader(CalibrationDataReader):
        def __init__(self):
            # As the run-time extractor normalises its input.
            self._batches = ({"images": normalisation.apply(np.asarray(im, np.float32)[None])} for im in images)

        def get_next(self):
            return next(self._batches, None)

    with tempfile.TemporaryDirectory(prefix="medfuse-calibrate-") as folder:
        calibrator = create_calibrator(Path(model), None, augmented_model_path=str(Path(folder) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax)
        calibrator.collect_data(Reader())
        measured = calibrator.compute_data()
    ranges = {}
    for name in sorted(measured.data):
        low, high = (float(np.asarray(v).reshape(-1)[0]) for v in measured.data[name].range_value)
        # The quantiser makes every range include 0; widening keeps that true.
        ranges[name] = [_widen(min(low, 0.0), up=False), _widen(max(high, 0.0), up=True)]
    return ranges


def write_ranges(path: Path, ranges: dict[str, list[float]], *, model_sha256: str, calibration: dict) -> None:
    """Write the ranges file: which float32 model they belong to, what calibrated them (how, which files), the ranges."""
    import onnxruntime

    # The quantiser's version: another one may write other bytes from the same ranges.
    payload = {"model_sha256": model_sha256, "calibration": calibration, "onnxruntime": onnxruntime.__version__,
               "ranges": ranges}
    path.write_text(json.dumps(payload, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def read_ranges(path: Path, *, model_sha256: str) -> dict[str, list[float]]:
    """The ranges of *path*; ValueError if they were calibrated on another float32 file."""
    payload = json.loads(Path(path).read_text(encoding="utf-8"))
    if payload.get("model_sha256") != model_sha256:
        raise ValueError(f"{path} was calibrated on a float32 trunk with sha256 {payload.get('model_sha256')}, "
                         f"not {model_sha256}: recalibrate (models/export.py efficientnet-lite0-int8 --calibrate DIR)")
    return payload["ranges"]


def quantise_trunk(model: Path, ranges: dict[str, list[float]], out: Path) -> str:
    """Write the int8 (QDQ) trunk of the float32 *model* with *ranges* to *out*, atomically; return its sha256."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {name: TensorData(lowest=np.array(low, np.float32), highest=np.array(high, np.float32))
            for name, (low, high) in ranges.items()}
    with tempfile.TemporaryDirectory(prefix="medfuse-quantise-", dir=out.parent) as folder:
        cache = Path(folder) / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        part = Path(folder) / out.name
        quantize_static(str(model), str(part), calibration_data_reader=None, calibration_cache_path=cache,
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        part.chmod(0o644)
        part.replace(out)
    return hashlib.sha256(out.read_bytes()).hexdigest()
