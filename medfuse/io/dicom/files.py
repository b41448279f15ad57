"""One DICOM file to an :class:`~medfuse.io.dicom.headers.InstanceHeader`, read within its bounds.

:func:`read_header` opens the file through :mod:`medfuse.io.dicom.source`
(no declared length trusted beyond the file's size, Deflate inflated within
limits), parses the header without pixels, and checks the Pixel Data
element against Rows × Columns × frames. Every way a file can fail, from a
text file to a corrupt or truncated one, becomes :class:`NotDicomError`
with a one-line reason; when the header was read far enough, the refusal
also names the file's series, whose volume would otherwise miss it.
"""

from __future__ import annotations

import dataclasses
import struct
import warnings
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_partial
from pydicom.uid import DeflatedExplicitVRLittleEndian

from medfuse.io.dicom.headers import InstanceHeader, header_from_dataset
from medfuse.io.dicom.source import (
    NotDicomError,
    bounded_file,
    check_pixel_element,
    deflated_dataset,
    file_meta,
    peek_syntax,
    syntax_problem,
)


def read_header(path: Path) -> InstanceHeader:
    """Parse one file's header (pixels are not read).

    Fast path: parsing stops after the Image Pixel module (group 0028), and
    the Pixel Data element is then expected at the very end of the file,
    where a 12-byte check confirms it (offset, tag, VR and length) and so
    also proves the file is complete. Enhanced multi-frame objects (their
    functional groups come later), compressed pixels, and files with
    anything after Pixel Data take the full header read instead. Files are
    read within their bounds (:mod:`medfuse.io.dicom.source`): no declared
    length is trusted beyond the file's size.

    Parameters
    ----------
    path : pathlib.Path
        Any file; non-DICOM, truncated and self-contradicting files raise
        :class:`NotDicomError`.

    Returns
    -------
    InstanceHeader
    """
    # The series a refused file belongs to, once known: its volume would miss the file.
    known = {"series": "", "dicom": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read_header(path, known)
    except NotDicomError as exc:
        refusal = exc
    except MemoryError:
        refusal = NotDicomError("header needs more memory than is available (corrupt lengths?)")
    except RecursionError:
        refusal = NotDicomError("sequences nested too deeply")
    except (EOFError, struct.error) as exc:
        refusal = NotDicomError(f"truncated DICOM: the file ends inside a data element ({_first_line(exc)})")
    except Exception as exc:  # parsing arbitrary bytes can fail in any way; the file is refused, with why
        refusal = NotDicomError(f"unreadable or truncated DICOM ({type(exc).__name__}: {_first_line(exc)})")
    refusal.series_instance_uid = refusal.series_instance_uid or known["series"]
    refusal.is_dicom = known["dicom"] and not str(refusal).startswith("DICOMDIR")
    raise refusal


def _read_header(path: Path, known: dict) -> InstanceHeader:
    with bounded_file(path) as (handle, size):
        syntax = peek_syntax(handle, size)
        if syntax is None:
            return _read_without_file_meta(path, handle, size)
        known["dicom"] = True
        problem = syntax_problem(syntax)
        if problem:
            raise NotDicomError(problem)
        if syntax == DeflatedExplicitVRLittleEndian:
            meta, offset = file_meta(handle)
            ds, body = deflated_dataset(path, handle, meta, offset, size, stop_before_pixels=True)
            header = _header(ds, path, -1)
            if header.has_pixel_data:
                _check_pixels(header, body, body.tell(), len(body.getbuffer()))
            return header
        handle.seek(0)
        ds = read_partial(handle, stop_when=_past_image_pixel_module)
        if "Rows" in ds:
            known["series"] = str(ds.get("SeriesInstanceUID", "")).strip()
        if "NumberOfFrames" not in ds and "SOPClassUID" in ds:
            header = _header(ds, path, -1)
            if not header.has_pixel_data:
                return header
            offset = _pixel_offset_from_end(handle, header, size)
            if offset is not None:
                return dataclasses.replace(header, pixel_offset=offset)
        handle.seek(0)
        ds = pydicom.dcmread(handle, stop_before_pixels=True)
        # pydicom stops at the start of the Pixel Data element, or at the
        # end of a file that was cut short inside its header.
        return _checked(ds, path, handle, handle.tell(), size)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


#: Transfer syntax of a dataset stored without file meta, by (implicit VR, little endian).
_ENCODING_SYNTAX = {
    (True, True): "1.2.840.10008.1.2",
    (False, True): "1.2.840.10008.1.2.1",
    (False, False): "1.2.840.10008.1.2.2",
}


def _read_without_file_meta(path: Path, handle, size: int) -> InstanceHeader:
    """A bare dataset without preamble and file meta (older exports), or NotDicomError.

    Accepted only when forced parsing yields SOP Class, SOP Instance and
    Series Instance UIDs; the transfer syntax is the encoding pydicom found.
    """
    refusal = "not a DICOM file (no DICM preamble)"
    try:
        handle.seek(0)
        ds = pydicom.dcmread(handle, stop_before_pixels=True, force=True)
        pixel_offset = handle.tell()
    except Exception as exc:  # forced parsing of arbitrary bytes can fail in any way
        raise NotDicomError(refusal) from exc
    if not all(k in ds for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")):
        raise NotDicomError(refusal)
    syntax = _ENCODING_SYNTAX.get(tuple(getattr(ds, "original_encoding", (None, None))), "")
    return _checked(ds, path, handle, pixel_offset, size, transfer_syntax_uid=syntax)


def _checked(ds: Dataset, path: Path, handle, pixel_offset: int, size: int, **kw) -> InstanceHeader:
    header = _header(ds, path, pixel_offset if pixel_offset < size else -1, **kw)
    if pixel_offset >= size and not header.sop_instance_uid:
        raise NotDicomError("truncated DICOM: the file ends inside its header")
    if header.has_pixel_data:
        _check_pixels(header, handle, pixel_offset, size)
    return header


def _check_pixels(header: InstanceHeader, handle, offset: int, size: int) -> None:
    """check_pixel_element; a refusal carries the file's series, whose volume would miss this file."""
    syntax = pydicom.uid.UID(header.transfer_syntax_uid) if header.transfer_syntax_uid else None
    try:
        check_pixel_element(handle, offset, size, _native_bytes(header), syntax)
    except NotDicomError as exc:
        exc.series_instance_uid = header.series_instance_uid
        raise


def _native_bytes(header: InstanceHeader) -> int:
    """Bytes of uncompressed Pixel Data that Rows, Columns, frames, samples and bits call for."""
    frames = max(1, header.declared_frames, len(header.frames))
    return (header.rows * header.columns * frames * header.samples_per_pixel
            * max(1, header.bits_allocated) + 7) // 8


def _past_image_pixel_module(tag, vr, length) -> bool:
    # Everything the index needs from a classic image lies in groups <= 0028.
    return tag.group > 0x0028


def _header(ds: Dataset, path: Path, pixel_offset: int, **kw) -> InstanceHeader:
    try:
        return header_from_dataset(ds, Path(path), pixel_offset=pixel_offset, **kw)
    except (EOFError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
        raise NotDicomError(f"corrupt or truncated DICOM header ({type(exc).__name__}: {exc})") from exc


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian


def _pixel_offset_from_end(handle, header: InstanceHeader, size: int) -> int | None:
    """Offset of a native Pixel Data element that ends the file, else None."""
    syntax = header.transfer_syntax_uid
    if syntax not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
        return None
    implicit = syntax == "1.2.840.10008.1.2"
    nbytes = _native_bytes(header)
    nbytes += nbytes % 2  # values are padded to even length
    element = 8 if implicit else 12
    offset = size - nbytes - element
    if offset < handle.tell():
        return None
    handle.seek(offset)
    head = handle.read(element)
    if len(head) != element or head[:4] != _PIXEL_DATA_TAG:
        return None
    if not implicit and head[4:6] not in (b"OB", b"OW"):
        return None
    return offset if int.from_bytes(head[-4:], "little") == nbytes else None
