"""Index a folder of DICOM files into studies → series, with a verdict per series.

Only headers are read (``stop_before_pixels``, :mod:`medfuse.io.dicom.files`).
Files that are not DICOM, DICOMDIR index files, truncated or corrupt files
and duplicate copies of an instance are skipped and listed with the reason;
a series that loses a file this way, or holds one SOP Instance UID twice
with different pixels, is refused rather than read without it. Instances
are grouped by Study and Series Instance UID and judged by
:mod:`medfuse.io.dicom.verdicts`: each resulting
:class:`~medfuse.io.dicom.series.SeriesInfo` carries ``usable`` and a
one-line ``reason``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

from medfuse.errors import ScanError
from medfuse.io.dicom.files import read_header
from medfuse.io.dicom.headers import InstanceHeader
from medfuse.io.dicom.series import FolderIndex, SeriesInfo, StudyInfo
from medfuse.io.dicom.source import NotDicomError
from medfuse.io.dicom.verdicts import split_series


def scan_folder(path: str | os.PathLike) -> FolderIndex:
    """Index every DICOM file under *path* (recursively; a single file works too).

    Parameters
    ----------
    path : str or path-like
        A folder (walked recursively, hidden entries skipped) or one file.

    Returns
    -------
    FolderIndex
        Studies sorted by date then UID; series by number then UID.

    Raises
    ------
    ScanError
        If *path* does not exist.
    """
    root = Path(path)
    if not root.exists():
        raise ScanError(f"{root}: no such file or folder")
    with warnings.catch_warnings():
        # pydicom warns about every invalid value it meets; the verdicts say what matters, in one line each.
        warnings.simplefilter("ignore")
        return _scan(root)


def _scan(root: Path) -> FolderIndex:
    files = [root] if root.is_file() else _walk(root)
    headers: list[InstanceHeader] = []
    skipped: list[tuple[Path, str]] = []
    seen: dict[str, InstanceHeader] = {}
    duplicates: dict[str, list[Path]] = defaultdict(list)
    conflicts: dict[str, str] = {}
    unreadable: dict[str, list[tuple[Path, str]]] = {}
    orphans: list[tuple[Path, str]] = []
    for file in files:
        # One process on purpose: header parsing is GIL-bound, and a process
        # pool measured no faster on the shared 2-core machine (see
        # docs/dicom-input.md) while adding start-up and fork hazards.
        try:
            header = read_header(file)
        except NotDicomError as exc:
            skipped.append((file, str(exc)))
            if exc.series_instance_uid:
                unreadable.setdefault(exc.series_instance_uid, []).append((file, str(exc)))
            elif exc.is_dicom:
                orphans.append((file, str(exc)))
            continue
        if header.sop_instance_uid and header.sop_instance_uid in seen:
            first = seen[header.sop_instance_uid]
            if _same_instance(first, header):
                skipped.append((file, f"duplicate of {first.path.name} (same SOP Instance UID)"))
                duplicates[header.series_instance_uid].append(file)
            else:
                skipped.append((file, f"same SOP Instance UID as {first.path.name} but different pixels or "
                                      "geometry"))
                conflicts.setdefault(first.series_instance_uid, (
                    f"SOP Instance UID {header.sop_instance_uid} is in two files with different pixels or "
                    f"geometry ({first.path.name}, {file.name}); remove the wrong one"))
            continue
        seen[header.sop_instance_uid] = header
        headers.append(header)

    by_series: dict[tuple[str, str], list[InstanceHeader]] = defaultdict(list)
    for header in headers:
        by_series[(header.study_instance_uid, header.series_instance_uid)].append(header)

    by_study: dict[str, list[SeriesInfo]] = defaultdict(list)
    for (study_uid, series_uid), members in by_series.items():
        notes = ()
        if duplicates.get(series_uid):
            notes = (f"{len(duplicates[series_uid])} duplicate file(s) ignored",)
        parts = split_series(members, notes)
        refusal = conflicts.get(series_uid) or _unreadable_members(unreadable.get(series_uid))
        if refusal:
            parts = [dataclasses.replace(p, usable=False, needs_volume_index=False, needs_split_choice=False,
                                         reason=refusal) for p in parts]
        by_study[study_uid].extend(parts)

    studies = []
    for study_uid, series in by_study.items():
        series.sort(key=lambda s: (s.series_number if s.series_number is not None else 1 << 30,
                                   s.series_instance_uid, s.split_value))
        first = series[0]
        studies.append(StudyInfo(study_uid, first.patient_id, first.study_date, tuple(series)))
    studies.sort(key=lambda st: (st.patient_id, st.study_date, st.study_instance_uid))
    return FolderIndex(root, tuple(studies), tuple(skipped), tuple(orphans))


def _unreadable_members(files: list[tuple[Path, str]] | None) -> str:
    """Why a series is refused when some of its files were refused (their slices would be missing)."""
    if not files:
        return ""
    path, reason = files[0]
    more = f" (+{len(files) - 1} more)" if len(files) > 1 else ""
    return f"{len(files)} file(s) of this series cannot be read, so its volume would miss them: {path.name}: {reason}{more}"


def _same_instance(a: InstanceHeader, b: InstanceHeader) -> bool:
    """True when two files with one SOP Instance UID hold the same pixels on the same planes."""
    if (a.rows, a.columns, len(a.frames)) != (b.rows, b.columns, len(b.frames)):
        return False
    for fa, fb in zip(a.frames, b.frames):
        for va, vb in ((fa.position, fb.position), (fa.orientation, fb.orientation)):
            if (va is None) != (vb is None) or (va is not None and not np.allclose(va, vb, atol=1e-4)):
                return False
    return _pixel_digest(a) == _pixel_digest(b)


def _pixel_digest(header: InstanceHeader) -> str:
    """sha256 of a file from its Pixel Data element on (of the whole file when that offset is unknown)."""
    digest = hashlib.sha256()
    with open(header.path, "rb") as handle:
        handle.seek(max(0, header.pixel_offset))
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(root: Path) -> list[Path]:
    """Files under *root*, sorted, following folder links once each (no loops)."""
    out = []
    visited = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out
