"""The studies of a cohort folder, where each one's output goes, and whether it is already done.

Every study :func:`medfuse.io.dicom.index.scan_folder` finds under the root
is one task. Its output folder is named after the folder nearest the root
that holds it and no other study (the patient folder, usually; a deeper
path is written with ``__`` for ``/``), which fuse-study then reads; a study
without such a folder (its files sit beside another study's) is named by its
StudyInstanceUID and given to fuse-study as a folder of links to its own
files (``OUT/.cohort-inputs/<name>/``).

A study is **done** when ``OUT/<name>/provenance.json`` says it was fused
from this study's series by this medfuse version and every output it lists
is there, complete (:func:`finished`); a folder's mere existence proves
nothing. The cohort's options live in ``OUT/cohort.json``: a rerun with
other options into the same folder is refused rather than mixing results.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from medfuse import __version__
from medfuse.errors import InputError, ScanError
from medfuse.io.dicom.index import FolderIndex, scan_folder

INPUT_LINKS = ".cohort-inputs"


@dataclass(frozen=True)
class CohortStudy:
    """One study of the cohort: its name (output folder), UIDs and input files."""

    name: str
    study_uid: str
    series_uids: tuple[str, ...]
    folder: Path
    files: tuple[Path, ...]
    shares_folder: bool

    def input_dir(self, out: Path) -> Path:
        """The folder fuse-study reads: the study's own folder, or its folder of links under *out*."""
        return out / INPUT_LINKS / self.name if self.shares_folder else self.folder


def find_studies(root: Path) -> list[CohortStudy]:
    """Scan *root*; one :class:`CohortStudy` per study, sorted by name.

    Raises
    ------
    ScanError
        No DICOM study under *root*.
    """
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    index = scan_folder(root)
    if not index.studies:
        raise ScanError(f"{root}: no DICOM studies found ({len(index.skipped)} file(s) skipped)")
    return plan_studies(index)


def plan_studies(index: FolderIndex) -> list[CohortStudy]:
    """Name each study of *index* and find the folder that holds it (see the module doc)."""
    root = Path(index.root)
    files = {st.study_instance_uid: sorted({inst.path for s in st.series for inst in s.instances})
             for st in index.studies}
    holders: dict[Path, set[str]] = defaultdict(set)  # folder -> studies with files below it
    for uid, paths in files.items():
        for path in paths:
            for parent in Path(path).parents:
                holders[parent].add(uid)
                if parent == root:
                    break
    studies, names = [], set()
    for st in index.studies:
        uid = st.study_instance_uid
        common = Path(os.path.commonpath([str(p.parent) for p in files[uid]]))
        # The folder nearest the root that holds this study and no other (the patient folder, usually).
        own = [f for f in (*reversed(common.relative_to(root).parents), common.relative_to(root))
               if f != Path(".") and holders[root / f] == {uid}] if common.is_relative_to(root) else []
        shared = not own
        folder = root / own[0] if own else common
        name = _safe("__".join(own[0].parts)) if own else _safe(uid)
        if name in names:
            name = _safe(f"{name}__{uid}")
        names.add(name)
        series = tuple(sorted(s.series_instance_uid for s in st.series))
        studies.append(CohortStudy(name, uid, series, folder, tuple(files[uid]), shared))
    return sorted(studies, key=lambda s: s.name)


def link_inputs(study: CohortStudy, out: Path) -> Path:
    """Make (again) the folder of links to a study's files that shares its folder; return it."""
    folder = study.input_dir(out)
    if not study.shares_folder:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for number, path in enumerate(study.files):
        (folder / f"{number:06d}-{path.name}").symlink_to(path.resolve())
    return folder


def finished(out_dir: Path, study: CohortStudy, formats: tuple[str, ...], report: bool) -> str | None:
    """Whether *out_dir* holds this study's finished output: None when it does, else why not.

    The reason starts with ``"missing"`` when there is nothing there yet (an
    absent or empty folder), which is the one case a task may write into.
    """
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return "missing"
    try:
        provenance = json.loads((out_dir / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{out_dir} exists but holds no readable provenance.json (not a medfuse result)"
    inputs = provenance.get("inputs") or []
    if provenance.get("medfuse_version") != __version__:
        return f"{out_dir} was made by medfuse {provenance.get('medfuse_version')}, not {__version__}"
    if {i.get("study_instance_uid") for i in inputs} != {study.study_uid} or not all(
            i.get("series_instance_uid") in study.series_uids for i in inputs):
        return f"{out_dir} holds the fusion of other input series than this study's"
    outputs = provenance.get("outputs") or {}
    wanted = set(formats) | ({"report"} if report else set())
    if not wanted <= set(outputs):
        return f"{out_dir} lacks outputs {', '.join(sorted(wanted - set(outputs)))}"
    dicom = outputs.get("dicom")
    if dicom and len(list((out_dir / dicom["folder"]).glob("*"))) != dicom["instances"]:
        return f"{out_dir}/{dicom['folder']} is incomplete"
    for key in ("nifti", "report"):
        if key in outputs and not (out_dir / outputs[key]["file"]).is_file():
            return f"{out_dir}/{outputs[key]['file']} is missing"
    return None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "study"
