"""Opening DICOM files without trusting what they declare.

Every length, count and transfer syntax inside a file is a claim, checked
against the file before anything is allocated for it:

* files are read through a read-only memory map, so a value whose declared
  length runs past the end of the file yields the bytes that exist (and
  pydicom then reports the file as truncated) instead of an allocation of
  the declared size (a 4 GB length field in a 1 kB file);
* the transfer syntax must be one pydicom knows; an unknown UID refuses the
  file with its value;
* a Deflated Explicit VR Little Endian dataset is inflated here, with a
  limit (:data:`MAX_INFLATED_BYTES`, and :data:`MAX_INFLATE_RATIO` × the
  compressed size above :data:`INFLATE_FLOOR_BYTES`) so a small "deflate
  bomb" cannot fill memory, and a corrupt stream is refused with zlib's
  reason;
* the Pixel Data element's own length field may not claim more bytes than
  the file holds after it, and uncompressed Pixel Data may hold neither
  fewer nor (beyond one padding byte) more bytes than Rows × Columns ×
  frames × bits describe.

Also here: which decoder a compressed transfer syntax needs
(:func:`missing_decoder`), and reading a whole dataset within these bounds
for pixel decoding (:func:`load_dataset`).
"""

from __future__ import annotations

import io
import mmap
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes, DeflatedExplicitVRLittleEndian, PrivateTransferSyntaxes, UID

#: Largest dataset a Deflate stream may inflate to (1 GiB).
MAX_INFLATED_BYTES = 1 << 30
#: Above INFLATE_FLOOR_BYTES, a Deflate stream may inflate to at most this many times its own size.
MAX_INFLATE_RATIO = 256
INFLATE_FLOOR_BYTES = 64 << 20

#: Decoder packages to suggest, by transfer syntax family (none of them GPL).
DECODER_PACKAGES = {
    "JPEG 2000": "pylibjpeg-openjpeg",
    "JPEG-LS": "pyjpegls",
    "JPEG": "python-gdcm",
    "RLE": "pylibjpeg-rle",
    "HTJ2K": "pylibjpeg-openjpeg",
}

_KNOWN_SYNTAXES = frozenset(AllTransferSyntaxes) | frozenset(PrivateTransferSyntaxes)
_PIXEL_DATA = 0x7FE00010


class NotDicomError(Exception):
    """A file is not DICOM, is truncated, or lies about itself; ``str()`` says which.

    ``series_instance_uid`` is set when the header was read far enough to
    know which series the refused file belongs to; ``is_dicom`` when the
    file has a DICOM preamble and file meta (an image file gone bad, not a
    stray text file).
    """

    series_instance_uid = ""
    is_dicom = False


def syntax_problem(transfer_syntax_uid: str) -> str:
    """'' when pydicom knows *transfer_syntax_uid* (or none is given), else the reason."""
    if not transfer_syntax_uid or transfer_syntax_uid in _KNOWN_SYNTAXES:
        return ""
    return f"unknown transfer syntax UID {transfer_syntax_uid[:64]!r}"


@contextmanager
def bounded_file(path: Path) -> Iterator[tuple[io.BufferedIOBase | mmap.mmap, int]]:
    """A read-only view of *path* whose reads never return (or allocate) more than the file holds."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            yield io.BytesIO(b""), 0
            return
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
            yield view, size


def file_meta(stream) -> tuple[Dataset, int] | None:
    """(file meta, offset of the dataset after it), or None for a file without the DICM preamble.

    Raises NotDicomError for an unknown transfer syntax.
    """
    stream.seek(0)
    try:
        read_preamble(stream, False)
    except pydicom.errors.InvalidDicomError:
        return None
    meta = _read_file_meta_info(stream)
    problem = syntax_problem(str(meta.get("TransferSyntaxUID", "")))
    if problem:
        raise NotDicomError(problem)
    return meta, stream.tell()


#: VRs whose explicit-VR element header has 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"})


def peek_syntax(stream, size: int) -> str | None:
    """The TransferSyntaxUID of a file with a DICM preamble ("" when its meta has none), or None without one.

    Walks the file meta group's elements (always explicit VR little endian)
    within the file's bounds: much cheaper than parsing the meta with
    pydicom, which the header read then does again anyway.
    """
    if size < 132:
        return None
    stream.seek(128)
    if stream.read(4) != b"DICM":
        return None
    at = 132
    while at + 8 <= size:
        stream.seek(at)
        head = stream.read(8)
        if head[:2] != b"\x02\x00":
            return ""
        vr = head[4:6]
        if vr in _LONG_VRS:
            length = int.from_bytes(stream.read(4), "little")
            start = at + 12
        else:
            length = int.from_bytes(head[6:8], "little")
            start = at + 8
        if head[2:4] == b"\x10\x00":
            stream.seek(start)
            return stream.read(min(length, 64)).decode("ascii", "replace").strip(" \x00")
        at = start + length
    return ""


def is_deflated(meta: Dataset) -> bool:
    return str(meta.get("TransferSyntaxUID", "")) == DeflatedExplicitVRLittleEndian


def inflate(stream, offset: int, size: int) -> bytes:
    """The dataset of a Deflated Explicit VR Little Endian file, inflated within the limits."""
    stream.seek(offset)
    compressed = stream.read(size - offset)
    limit = min(MAX_INFLATED_BYTES, max(INFLATE_FLOOR_BYTES, MAX_INFLATE_RATIO * len(compressed)))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        body = inflater.decompress(compressed, limit)
    except zlib.error as exc:
        raise NotDicomError(f"corrupt Deflate stream ({exc})") from None
    if inflater.unconsumed_tail:
        raise NotDicomError(f"Deflate stream inflates to more than {limit >> 20} MiB "
                            f"({len(compressed)} bytes compressed); refused")
    if not inflater.eof:
        raise NotDicomError("corrupt Deflate stream (ends before its last block)")
    return body


def deflated_dataset(path: Path, stream, meta: Dataset, offset: int, size: int, *,
                     stop_before_pixels: bool) -> tuple[FileDataset, io.BytesIO]:
    """(dataset, the inflated stream, positioned where parsing stopped) of a deflated file."""
    body = io.BytesIO(inflate(stream, offset, size))
    stop = (lambda tag, vr, length: tag == _PIXEL_DATA) if stop_before_pixels else None
    dataset = read_dataset(body, False, True, stop_when=stop)
    return FileDataset(str(path), dataset, b"\0" * 128, meta, False, True), body


def load_dataset(path: Path, *, stop_before_pixels: bool = False, transfer_syntax_uid: str = "") -> Dataset:
    """The whole dataset of a file the index accepted, read within the file's bounds.

    Files without file meta are parsed with ``force`` and given
    *transfer_syntax_uid* (the encoding the index found); deflated files
    are inflated within the limits.
    """
    with bounded_file(path) as (stream, size):
        found = file_meta(stream)
        if found is not None and is_deflated(found[0]):
            return deflated_dataset(path, stream, found[0], found[1], size,
                                    stop_before_pixels=stop_before_pixels)[0]
        stream.seek(0)
        ds = pydicom.dcmread(stream, stop_before_pixels=stop_before_pixels, force=True)
    if "TransferSyntaxUID" not in ds.file_meta and transfer_syntax_uid:
        ds.file_meta.TransferSyntaxUID = transfer_syntax_uid
    return ds


def check_pixel_element(stream, offset: int, size: int, expected: int, syntax: UID | None) -> None:
    """Refuse Pixel Data that is missing, shorter than Rows × Columns × frames say, or longer than the file.

    *offset* is where the Pixel Data element starts in *stream* (of *size*
    bytes); *expected* the native size in bytes (checked for uncompressed
    syntaxes only).
    """
    remaining = size - offset
    if remaining <= 0:
        raise NotDicomError("truncated DICOM: no pixel data after the header")
    implicit = syntax is not None and syntax.is_implicit_VR
    element_header = 8 if implicit else 12
    stream.seek(offset)
    head = stream.read(element_header)
    if len(head) < element_header:
        raise NotDicomError(f"truncated DICOM: the file ends inside the Pixel Data element header "
                            f"({len(head)} of {element_header} bytes)")
    declared = int.from_bytes(head[-4:], "big" if syntax is not None and not syntax.is_little_endian else "little")
    available = remaining - element_header
    if (syntax is None or not syntax.is_compressed) and available < expected:
        raise NotDicomError(f"truncated DICOM: pixel data has {max(0, available)} of {expected} bytes")
    if declared != 0xFFFFFFFF and declared > available:
        raise NotDicomError(f"Pixel Data declares {declared} bytes but the file holds {available} after it")
    if (syntax is None or not syntax.is_compressed) and declared != 0xFFFFFFFF and declared > expected + 1:
        # More pixels than Rows x Columns x frames describe: one of them is wrong, and reading would
        # reshape the bytes into a garbled image.
        raise NotDicomError(f"Pixel Data holds {declared} bytes but Rows, Columns, frames and bits call for "
                            f"{expected}")


def missing_decoder(transfer_syntax_uid: str) -> str:
    """'' when pixels in this transfer syntax can be decoded, else the reason."""
    if not transfer_syntax_uid:
        return ""
    uid = UID(transfer_syntax_uid)
    if not uid.is_compressed:
        return ""
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return f"compressed {uid.name}: no decoder exists in pydicom for it"
    if decoder.is_available:
        return ""
    return f"compressed {uid.name} and no decoder installed (pip install {decoder_package(uid.name)})"


def decoder_package(syntax_name: str) -> str:
    """The non-GPL package to install to decode a transfer syntax, by its name."""
    for family in ("HTJ2K", "JPEG 2000", "JPEG-LS", "RLE", "JPEG"):
        if family.lower().replace("-", "") in syntax_name.lower().replace("-", ""):
            return DECODER_PACKAGES[family]
    return "python-gdcm"

