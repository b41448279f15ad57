"""Read one indexed DICOM series into a :class:`~medfuse.volume.model.Volume`.

Geometry comes from the index (:mod:`medfuse.io.dicom.index`): slices are
already sorted along the normal and the stack has been checked for gaps,
non-uniform spacing, tilt and duplicates. This module decodes the pixels,
applies each frame's own RescaleSlope/Intercept in float32 (per-slice
slopes, as in PET, are kept per slice), and builds the LPS SimpleITK image:
origin = first slice's ImagePositionPatient, direction columns = row,
column and normal cosines, spacing = (column spacing, row spacing, slice
spacing from positions).
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medfuse.errors import SeriesReadError
from medfuse.io.dicom.geometry import direction_matrix
from medfuse.io.dicom.headers import reference_dicts
from medfuse.io.dicom.index import scan_folder
from medfuse.io.dicom.series import SeriesInfo, SliceRef, orphans_problem, skipped_note
from medfuse.io.dicom.source import NotDicomError, decoder_package, load_dataset, missing_decoder
from medfuse.volume.model import InstanceReference, SeriesReference, Volume

def read_series(
    series_info_or_dir: SeriesInfo | str | os.PathLike,
    *,
    volume_index: int | None = None,
) -> Volume:
    """Read a DICOM series as a float32 LPS volume.

    Parameters
    ----------
    series_info_or_dir : SeriesInfo or path
        An indexed series, or a folder (or single multi-frame file) holding
        exactly one series that is readable.
    volume_index : int, optional
        0-based volume to take from a 4-D series (required for those).

    Returns
    -------
    Volume
        ``image`` is float32 (rescale applied), (x, y, z) = (columns, rows,
        slices); ``references`` lists every source instance in slice order.

    Raises
    ------
    SeriesReadError
        The series is unusable (with the index's reason), ambiguous, or its
        pixels cannot be decoded.
    """
    with warnings.catch_warnings():
        # pydicom warns about invalid values as it decodes; refusals say what matters, in one line.
        warnings.simplefilter("ignore")
        return _read(series_info_or_dir, volume_index)


def _read(series_info_or_dir, volume_index: int | None) -> Volume:
    series = _resolve(series_info_or_dir)
    volume_refs = _choose_volume(series, volume_index)
    pixels = _decode(volume_refs, series)
    first = volume_refs[0].frame
    spacing_xy = (float(first.pixel_spacing[1]), float(first.pixel_spacing[0]))
    image = sitk.GetImageFromArray(pixels, isVector=False)
    image.SetSpacing((*spacing_xy, float(series.spacing[2])))
    image.SetOrigin(tuple(float(v) for v in first.position))
    image.SetDirection(tuple(direction_matrix(first.orientation).ravel()))
    reference = _series_reference(series, volume_refs)
    source = _source(series)
    label = series.label + (f" volume {volume_index}" if series.n_volumes > 1 else "")
    return Volume(image=image, modality=series.modality, references=reference, source=source, label=label)


def _source(series: SeriesInfo) -> Path:
    """The folder (or single file) the series' instances share."""
    return Path(os.path.commonpath([str(i.path) for i in series.instances]))


def _resolve(series_info_or_dir) -> SeriesInfo:
    if isinstance(series_info_or_dir, SeriesInfo):
        return series_info_or_dir
    index = scan_folder(series_info_or_dir)
    candidates = [s for s in index.series if s.volumes]
    if not index.series:
        raise SeriesReadError(f"{series_info_or_dir}: no DICOM series found{skipped_note(index)}")
    if index.orphans:
        raise SeriesReadError(f"{series_info_or_dir}: {orphans_problem(index)}")
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        first = index.series[0]
        if len(index.series) == 1:
            raise SeriesReadError(f"{series_info_or_dir}: {first.label}: {first.reason}")
        raise SeriesReadError(f"{series_info_or_dir}: no image series ({first.label}: {first.reason})")
    usable = [s for s in candidates if s.usable]
    if len(usable) == 1:
        return usable[0]
    listing = "; ".join(f"{s.label} [{s.series_instance_uid}] {s.verdict}" for s in candidates)
    raise SeriesReadError(f"{series_info_or_dir}: {len(candidates)} image series; pick one (--series NUMBER|UID): {listing}")


def _choose_volume(series: SeriesInfo, volume_index: int | None) -> tuple[SliceRef, ...]:
    if not series.usable and not (series.needs_volume_index and volume_index is not None):
        raise SeriesReadError(f"{_source(series)}: {series.label}: {series.reason}")
    if volume_index is None:
        return series.volumes[0]
    if not 0 <= volume_index < series.n_volumes:
        raise SeriesReadError(
            f"{series.label}: volume index {volume_index} out of range (series has {series.n_volumes})"
        )
    return series.volumes[volume_index]


def _decode(refs: tuple[SliceRef, ...], series: SeriesInfo) -> np.ndarray:
    """Decode frames into (z, y, x) float32 with each frame's rescale applied."""
    problem = missing_decoder(series.transfer_syntax_uid)
    if problem:
        raise SeriesReadError(f"{series.label}: {problem}")
    rows, cols = refs[0].instance.rows, refs[0].instance.columns
    out = np.empty((len(refs), rows, cols), dtype=np.float32)
    by_file: dict[Path, list[tuple[int, SliceRef]]] = defaultdict(list)
    for z, ref in enumerate(refs):
        by_file[ref.instance.path].append((z, ref))

    def load(item: tuple[Path, list[tuple[int, SliceRef]]]) -> None:
        path, placed = item
        try:
            data = _native_pixels(placed[0][1].instance)
            if data is None:
                data = _pydicom_pixels(placed[0][1].instance)
        except (NotImplementedError, RuntimeError) as exc:
            syntax = pydicom.uid.UID(series.transfer_syntax_uid).name
            raise SeriesReadError(
                f"{path}: cannot decode {syntax} pixels ({_first_line(exc)}); "
                f"install {decoder_package(syntax)}"
            ) from exc
        except NotDicomError as exc:
            raise SeriesReadError(f"{path}: {exc}") from exc
        except MemoryError:
            raise SeriesReadError(f"{path}: not enough memory to decode its pixel data") from None
        except Exception as exc:  # a decoder fed corrupt bytes can fail in any way; name the file and why
            raise SeriesReadError(f"{path}: pixel data unreadable ({type(exc).__name__}: {_first_line(exc)})") from exc
        data = np.asarray(data)
        indices = [ref.frame.frame_index for _, ref in placed if ref.frame.frame_index is not None]
        if indices and data.ndim == 2:
            data = data[np.newaxis]
        if indices and max(indices) >= data.shape[0]:
            raise SeriesReadError(f"{path}: pixel data holds {data.shape[0]} frame(s), the header describes "
                                  f"{max(indices) + 1}")
        for z, ref in placed:
            frame = data if ref.frame.frame_index is None else data[ref.frame.frame_index]
            if frame.shape != (rows, cols):
                raise SeriesReadError(f"{path}: frame shape {frame.shape} differs from {(rows, cols)}")
            np.multiply(frame, np.float32(ref.frame.slope), out=out[z], casting="unsafe")
            out[z] += np.float32(ref.frame.intercept)

    # Sequential on purpose: pydicom parsing holds the GIL, and threads
    # measured slower than a plain loop on the 2-core CI machine.
    for item in by_file.items():
        load(item)
    return out


def _pydicom_pixels(instance) -> np.ndarray:
    """Decode with pydicom's plugins (compressed, big endian, unusual layouts)."""
    # The index accepted this file, including bare datasets without file meta.
    return load_dataset(instance.path, transfer_syntax_uid=instance.transfer_syntax_uid).pixel_array


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2": True, "1.2.840.10008.1.2.1": False}  # uid -> implicit VR


def _native_pixels(instance) -> np.ndarray | None:
    """Uncompressed little-endian pixels read straight from the file, or None.

    The index already knows where Pixel Data starts, so the header is not
    parsed a second time: this is what makes a 300-slice read fast. Any case
    off the simple path (compressed, big endian, colour, odd bit depths,
    undefined length) returns None and pydicom decodes the file instead.
    Returns (rows, cols) for a single frame, (frames, rows, cols) otherwise.
    """
    implicit = _NATIVE_SYNTAXES.get(instance.transfer_syntax_uid)
    if (implicit is None or instance.pixel_offset < 0 or instance.samples_per_pixel != 1
            or instance.bits_allocated not in (8, 16, 32)):
        return None
    n_frames = len(instance.frames)
    count = instance.rows * instance.columns * n_frames
    itemsize = instance.bits_allocated // 8
    header = 8 if implicit else 12
    with open(instance.path, "rb") as handle:
        handle.seek(instance.pixel_offset)
        element = handle.read(header)
        if len(element) != header or element[:4] != _PIXEL_DATA_TAG:
            return None
        length = int.from_bytes(element[-4:], "little")
        if length == 0xFFFFFFFF or length < count * itemsize:
            return None
        raw = handle.read(count * itemsize)
    if len(raw) != count * itemsize:
        return None
    kind = "i" if instance.pixel_representation == 1 else "u"
    data = np.frombuffer(raw, dtype=f"<{kind}{itemsize}")
    stored = instance.bits_stored or instance.bits_allocated
    if stored < instance.bits_allocated:
        # Only the low BitsStored bits are the value; sign-extend signed data.
        shift = instance.bits_allocated - stored
        data = (data << shift) >> shift if kind == "i" else data & ((1 << stored) - 1)
    data = data.reshape(n_frames, instance.rows, instance.columns)
    return data if instance.is_multiframe else data[0]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _series_reference(series: SeriesInfo, refs: tuple[SliceRef, ...]) -> SeriesReference:
    try:
        head = load_dataset(refs[0].instance.path, stop_before_pixels=True)
    except Exception as exc:  # the file changed since the scan, or parsing failed; say which file
        raise SeriesReadError(f"{refs[0].instance.path}: header unreadable ({type(exc).__name__}: "
                              f"{_first_line(exc)})") from exc
    patient_study, equipment, extra = reference_dicts(head)
    seen: dict[str, InstanceReference] = {}
    for ref in refs:
        inst = ref.instance
        seen.setdefault(inst.sop_instance_uid, InstanceReference(inst.sop_class_uid, inst.sop_instance_uid))
    return SeriesReference(
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        frame_of_reference_uid=series.frame_of_reference_uid,
        modality=series.modality,
        sop_class_uid=series.sop_class_uid,
        instances=tuple(seen.values()),
        patient_study=patient_study,
        equipment=equipment,
        series_number=series.series_number,
        series_description=series.series_description,
        extra=extra,
    )
