"""The main job: a patient folder (or explicit volumes) in, a fused series out.

Stages, each timed and reported, each failing with its own exit code
(:mod:`medfuse.errors`):

1. **scan** (3) -- index the folder (:func:`medfuse.io.dicom.index.scan_folder`);
2. **select** (3) -- choose the fixed (anatomical) and moving series;
3. **read** (3) -- read them as volumes;
4. **register** (4) -- register each moving volume to the fixed one (skipped
   when they share a FrameOfReferenceUID);
5. **map** (2) -- choose each volume's mapping to [0, 1] from its own voxels
   (:func:`medfuse.volume.intensity.choose_mapping`), then resample the moving
   volumes onto the fixed grid with their coverage masks, map, and write
   everything to scratch files beside the output, slab by slab
   (:func:`medfuse.volume.staging.stage_on_grid`); the input pixels are
   released here;
   **check** (4, or 9 with ``strict``) -- an independent check of each result
   (:func:`medfuse.volume.alignment_check.check_alignment`); a doubt is said
   on the terminal and kept in the provenance and the result;
6. **fuse** (5) -- slice-wise fusion on Dask from and to those files
   (:func:`medfuse.volume.dispatch.fuse_staged`);
   with ``colour_series``, a second fusion on the functional volume's palette luma
   (stage **colour**, :mod:`medfuse.study.colour`);
7. **write** (6) -- the DICOM series and/or NIfTI file, the provenance sidecar
   ``provenance.json``, the registration transforms and, with ``report``, the
   QC page ``report.html``.

**Memory.** No volume on the fixed grid is held whole in memory: sources,
coverage masks and the fused volume live in a hidden scratch folder beside
``out_dir`` (``.<name>.fusion-*``: 5 bytes per fixed voxel per source plus 4 for the output;
removed at the end, also on failure), read and written slab by slab; the
writers read the fused volume one slice at a time. The run holds a lock on
the scratch folder while it lives (:func:`medfuse.atomic.claim_run_folder`);
a run killed with ``kill -9`` leaves it behind, and the next run for the same
``out_dir`` removes it (:func:`medfuse.atomic.sweep_stale_run_folders`).

**Atomic output.** Everything is written into the folder ``output`` of the
scratch folder, which is renamed to ``out_dir`` only when every output is
complete; on failure it is removed, so ``out_dir`` either holds a complete
result or does not exist. ``out_dir`` must not exist or be an empty folder.

Output layout::

    OUT_DIR/dicom/IM00001.dcm ...   fused series (format "dicom")
    OUT_DIR/dicom_colour/IM00001.dcm ...  RGB Secondary Capture series (option ``colour``)
    OUT_DIR/fused.nii.gz            fused volume, fixed grid affine (format "nifti")
    OUT_DIR/provenance.json         everything needed to reproduce and audit the run
    OUT_DIR/transforms/*.tfm        registration transforms (ITK text format)
    OUT_DIR/report.html             QC report (option ``report``)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medfuse import __version__
from medfuse.atomic import (check_folder_creatable, claim_run_folder, crash_point, sweep_stale_run_folders,
                            with_crash_points)
from medfuse.core.config import FusionConfig
from medfuse.errors import (
    DoubtfulRegistrationError,
    FusionError,
    InputError,
    MedfuseError,
    RegistrationError,
    ScanError,
    SelectionError,
    WriteError,
    one_line,
)
from medfuse.io.dicom.index import FolderIndex, SeriesInfo, scan_folder
from medfuse.io.dicom.read import read_series
from medfuse.io.dicom.write import write_colour_series, write_fused_series
from medfuse.io.nifti import is_nifti_path, write_nifti
from medfuse.io.select import describe_candidates, find_series, select_series
from medfuse.io.volumes import load_volume
from medfuse.study.colour import Palette, functional_source, rgb_slices
from medfuse.study.progress import Progress
from medfuse.volume.chunk_task import WeightPlanes
from medfuse.volume.dispatch import SALIENCY_SCOPES, fuse_staged, fuse_volume, local_workers_for
from medfuse.volume.local_cluster import refuse_in_starting_worker
from medfuse.volume.intensity import choose_mapping, parse_window
from medfuse.volume.model import Volume
from medfuse.volume.alignment_check import check_alignment, doubtful_registrations
from medfuse.volume.registration import RegistrationConfig, register
from medfuse.volume.transforms import write_transform
from medfuse.volume.staging import stage_on_grid

__all__ = ["FORMATS", "StudyOptions", "StudyResult", "fuse_study", "fuse_volumes"]

FORMATS = ("dicom", "nifti")
#: Modalities whose DICOM series can lend a DICOM output its patient, study and SOP class
#: (:func:`medfuse.io.dicom.write.anatomical_reference`).
DICOM_OUTPUT_MODALITIES = ("CT", "MR")


@dataclass(frozen=True)
class StudyOptions:
    """Every choice of a fuse-study / fuse-volumes run.

    Attributes
    ----------
    fixed : str, optional
        Fixed series by SeriesNumber or SeriesInstanceUID (fuse-study only).
    moving : tuple of str
        Moving series by SeriesNumber or SeriesInstanceUID (fuse-study only);
        several for K > 2 volumes.
    rules : dict, optional
        Selection rules ``{"fixed": {...}, "moving": {...}}`` for
        :func:`medfuse.io.select.select_series` (fuse-study only).
    window : str, optional
        CT window for the intensity mapping: preset name or "C,W".
    workers : int, optional
        Local Dask worker processes (default one per core; 1 = in-process).
    scheduler : str, optional
        ``tcp://host:port`` of an existing dask.distributed scheduler.
    formats : tuple of str, optional
        Outputs among :data:`FORMATS`. None (default) follows the inputs:
        ("dicom", "nifti") when an input is a DICOM CT or MR series (the
        DICOM output takes its patient and study), else ("nifti",). DICOM
        output asked for without such an input is refused before any work.
    report : bool
        Write the QC report ``report.html``.
    colour_series : bool
        Also write ``dicom_colour/``: an RGB Secondary Capture series of the
        anatomy fused with the PET/SPECT volume through the HOT_IRON palette
        (:mod:`medfuse.study.colour`). Needs one PT/NM and a CT/MR input.
    saliency_scope : {'volume', 'slice'}
        See :mod:`medfuse.volume.dispatch`.
    fusion : FusionConfig
    registration : RegistrationConfig, optional
    deterministic_uids : bool
        Derive the output UIDs from the inputs' UIDs, the options and the
        medfuse version (re-runs then write the same UIDs) instead of random ones.
    uid_entropy : str, optional
        Derive the output UIDs from this string instead (e.g. a job ledger key):
        the series UID is ``medfuse.io.dicom.write.derived_uid(uid_entropy, "series")``
        and instance z's ``derived_uid(uid_entropy, "instance", str(z))``, so a
        caller knows them before the run and need not rewrite them afterwards.
        Excludes ``deterministic_uids``; recorded in the provenance.
    progress : Progress, optional
        Where stage progress goes (default: nowhere).
    strict : bool
        Refuse to write anything when the alignment check (stage **check**,
        :mod:`medfuse.volume.alignment_check`) doubts a registration:
        :class:`~medfuse.errors.DoubtfulRegistrationError` (exit code 9).
        Without it the outputs are written and the doubt is recorded in
        the provenance, the report and :attr:`StudyResult.alignment_warnings`.
    """

    fixed: str | None = None
    moving: tuple[str, ...] = ()
    rules: dict | None = None
    window: str | None = None
    workers: int | None = None
    scheduler: str | None = None
    formats: tuple[str, ...] | None = None
    report: bool = False
    colour_series: bool = False
    saliency_scope: str = "volume"
    fusion: FusionConfig = field(default_factory=FusionConfig)
    registration: RegistrationConfig | None = None
    deterministic_uids: bool = False
    uid_entropy: str | None = None
    progress: Progress | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        if self.formats is not None:
            formats = tuple(self.formats)
            if not formats or any(f not in FORMATS for f in formats):
                raise InputError(f"formats must be a non-empty subset of {', '.join(FORMATS)}, got {','.join(formats)}")
            object.__setattr__(self, "formats", formats)
        if self.window is not None:
            parse_window(self.window)  # a malformed window is refused now, not at the map stage
        object.__setattr__(self, "moving", tuple(self.moving))
        if self.saliency_scope not in SALIENCY_SCOPES:
            raise InputError(f"saliency scope must be one of {', '.join(SALIENCY_SCOPES)}, got {self.saliency_scope!r}")
        if self.workers is not None and (isinstance(self.workers, bool) or not isinstance(self.workers, int)
                                         or self.workers < 1):
            raise InputError(f"workers must be a positive integer, got {self.workers!r}")
        if self.workers is not None and self.scheduler is not None:
            raise InputError("give either workers or a scheduler address, not both")
        if self.uid_entropy is not None and (not isinstance(self.uid_entropy, str) or not self.uid_entropy.strip()):
            raise InputError(f"uid_entropy must be a non-empty string, got {self.uid_entropy!r}")
        if self.uid_entropy is not None and self.deterministic_uids:
            raise InputError("give either deterministic_uids or uid_entropy, not both")
        if self.scheduler is not None and not self.scheduler.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
            raise InputError(f"scheduler must be an address like tcp://host:8786, got {self.scheduler!r}")


@dataclass(frozen=True)
class StudyResult:
    """Where a run's outputs are, and what it did.

    Attributes
    ----------
    out_dir : Path
    dicom_dir, nifti_path, report_path, colour_dir : Path or None
        None when that output was not requested.
    provenance_path : Path
    series_instance_uid, study_instance_uid : str or None
        Of the written DICOM series (None without DICOM output).
    timings : dict of str to float
        Seconds per stage.
    """

    out_dir: Path
    dicom_dir: Path | None
    nifti_path: Path | None
    provenance_path: Path
    report_path: Path | None
    series_instance_uid: str | None
    study_instance_uid: str | None
    timings: dict = field(default_factory=dict)
    colour_dir: Path | None = None
    alignment_warnings: list = field(default_factory=list)


_STAGE_ERRORS = {
    "scan": ScanError, "select": ScanError, "read": ScanError, "register": RegistrationError, "check": RegistrationError,
    "map": InputError, "fuse": FusionError, "colour": FusionError, "write": WriteError,
}


def fuse_study(patient_dir: str | os.PathLike, out_dir: str | os.PathLike, options: StudyOptions | None = None) -> StudyResult:
    """Fuse the series of a patient folder into a new series of the same study.

    Parameters
    ----------
    patient_dir : path
        A folder of DICOM files (searched recursively).
    out_dir : path
        Output folder (must not exist, or be empty).
    options : StudyOptions, optional

    Returns
    -------
    StudyResult

    Raises
    ------
    MedfuseError
        The subclass of the stage that failed (its ``exit_code`` says which).
    """
    options = options or StudyOptions()
    run = _Run(options, Path(out_dir))
    patient_dir = Path(patient_dir)
    if not patient_dir.is_dir():
        raise InputError(f"{patient_dir}: not a folder")
    with run.stage("scan"):
        index = scan_folder(patient_dir)
    with run.stage("select"):
        fixed_info, moving_infos, how = choose_series(index, options.fixed, options.moving, options.rules)
        run.progress.info(f"fixed: {fixed_info.label}; moving: " + "; ".join(m.label for m in moving_infos))
    run.settle_outputs([(info.label, info.modality) for info in (fixed_info, *moving_infos)])
    with run.stage("read"):
        volumes = [read_series(info) for info in (fixed_info, *moving_infos)]
    return run.finish(volumes, {"patient_dir": str(patient_dir), "selection": how})


def fuse_volumes(paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
                 options: StudyOptions | None = None) -> StudyResult:
    """Fuse explicitly given volumes (NIfTI files or DICOM series folders); the first is fixed.

    Parameters, returns and raises as :func:`fuse_study`. DICOM output needs at
    least one DICOM CT or MR input (it takes patient and study from it): with
    NIfTI inputs only it is refused before anything is read.
    """
    options = options or StudyOptions()
    if len(paths) < 2:
        raise InputError(f"fuse-volumes needs at least two volumes, got {len(paths)}")
    paths = [Path(p) for p in paths]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"no such file or folder: {', '.join(missing)}")
    run = _Run(options, Path(out_dir))
    nifti = [p.is_file() and is_nifti_path(p) for p in paths]
    if all(nifti):
        run.settle_outputs([(p.name, None) for p in paths])
    with run.stage("read"):
        volumes = [load_volume(path) for path in paths]
    if not all(nifti):
        run.settle_outputs([(p.name, v.references.modality if v.references is not None else None)
                            for p, v in zip(paths, volumes)])
    return run.finish(volumes, {"paths": [str(p) for p in paths]})


def choose_series(index: FolderIndex, fixed: str | None = None, moving: Sequence[str] = (),
                  rules: dict | None = None) -> tuple[SeriesInfo, list[SeriesInfo], dict]:
    """Pick the fixed series and the moving one(s) from an indexed folder.

    Uses :func:`medfuse.io.select.select_series` (rules, ``--fixed``/``--moving``
    overrides, "largest axial series", refusal with the candidates listed when
    ambiguous). Two additions for this pipeline:

    * a folder whose usable series are exactly two of one modality (e.g. two MR
      contrasts, like the sample study) is selected with that modality as both
      roles' rule: the larger series is fixed, the other moving;
    * several ``moving`` keys (K > 2 volumes) are each looked up by series
      number or UID.

    Returns
    -------
    (fixed SeriesInfo, list of moving SeriesInfo, dict saying how each was chosen)
    """
    if len(moving) > 1:
        fixed_info = find_series(index, fixed) if fixed else select_series(index, rules, None, moving[0]).fixed
        moving_infos = [find_series(index, key) for key in moving]
        chosen = [fixed_info, *moving_infos]
        unusable = [s for s in chosen if not s.usable]
        if unusable:
            raise SelectionError(f"not usable: {describe_candidates(unusable)}")
        if len({id(s) for s in chosen}) != len(chosen):
            raise SelectionError(f"a series is given twice: {describe_candidates(chosen)}")
        return fixed_info, moving_infos, {"fixed": f"given or selected ({fixed or 'rules'})", "moving": "given"}
    if rules is None and fixed is None and not moving:
        usable = [s for s in index.series if s.usable]
        if len(usable) == 2 and usable[0].modality == usable[1].modality:
            rules = {"fixed": usable[0].modality, "moving": usable[0].modality}
    selection = select_series(index, rules, fixed, moving[0] if moving else None)
    return selection.fixed, [selection.moving], selection.to_dict()


class _Run:
    """One run's state: options, stage timings, the staging folder."""

    def __init__(self, options: StudyOptions, out_dir: Path):
        refuse_in_starting_worker()  # an unguarded script re-imported by a local worker: stop before any work
        sweep_stale_run_folders(out_dir)  # scratch left beside OUT by runs that were killed (atomic.py says which)
        self.options = options
        self.out_dir = out_dir
        self.progress = options.progress or Progress("quiet")
        self.timings: dict[str, float] = {}
        self.checks: list = []  # AlignmentCheck per moving volume (stage "check")
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise InputError(f"output folder {out_dir} already exists and is not empty")
        check_folder_creatable(out_dir)  # before any work, not at the write stage
        _model_identity(options.fusion)  # a missing or altered model file: refused now, not after registration
        self.started = datetime.now(timezone.utc)

    def settle_outputs(self, inputs: Sequence[tuple[str, str | None]]) -> None:
        """Choose the formats that follow the inputs, or refuse DICOM outputs they cannot give, before the work.

        *inputs*: (name, modality) per input, the modality None for one that is not DICOM.
        """
        options = self.options
        source = any(modality in DICOM_OUTPUT_MODALITIES for _, modality in inputs)
        described = ", ".join(f"{name} ({f'{modality} DICOM' if modality else 'NIfTI'})" for name, modality in inputs)
        if options.formats is None:
            formats = FORMATS if source else ("nifti",)
            self.options = options = dataclasses.replace(options, formats=formats)
            if not source:
                self.progress.info(f"writing NIfTI only: no input is a DICOM CT or MR series ({described})")
        asked = [what for what, wanted in (("DICOM output (--format dicom)", "dicom" in options.formats),
                                           ("the colour series (--colour)", options.colour_series)) if wanted]
        if asked and not source:
            raise InputError(f"{' and '.join(asked)} needs a DICOM CT or MR input to take patient and study from; "
                             f"the inputs are {described} (use --format nifti)")
        if options.colour_series:
            functional_source([modality for _, modality in inputs])

    @contextmanager
    def stage(self, name: str, total: int | None = None):
        started = time.perf_counter()
        try:
            with self.progress.stage(name, total) as advance:
                crash_point(name)
                yield with_crash_points(name, advance)
        except MedfuseError:
            raise
        except MemoryError as exc:
            raise _STAGE_ERRORS[name](f"{name}: out of memory") from exc
        except Exception as exc:  # unexpected library failure: report it as this stage's error
            raise _STAGE_ERRORS[name](f"{name} failed: {one_line(exc)}") from exc
        finally:
            self.timings[name] = round(time.perf_counter() - started, 3)

    def finish(self, volumes: list[Volume], inputs: dict) -> StudyResult:
        options = self.options
        functional = functional_source([v.modality for v in volumes]) if options.colour_series else None
        fixed = volumes[0]
        registrations = []
        with self.stage("register", total=len(volumes) - 1) as advance:
            for index in range(1, len(volumes)):
                registrations.append(register(fixed, volumes[index], options.registration))
                advance(1, len(volumes) - 1)
        with self.stage("check", total=len(volumes) - 1):
            self.checks = [check_alignment(fixed, v, r.transform, r.initial) for v, r in zip(volumes[1:], registrations)]
        doubts = doubtful_registrations(volumes, self.checks)
        for doubt in doubts:
            self.progress.info(f"DOUBTFUL REGISTRATION: {doubt}")
        if doubts and options.strict:
            raise DoubtfulRegistrationError(f"doubtful registration, nothing written (--strict): {'; '.join(doubts)}")
        try:
            self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriteError(f"cannot create a scratch folder beside {self.out_dir}: {exc.strerror or exc}") from exc
        # Locked while this process lives: a later run sweeps it only if this one was killed.
        run_folder = claim_run_folder(self.out_dir, "fusion")
        scratch = run_folder.path
        x, y, z = fixed.image.GetSize()
        # Local workers (when the job uses them) start now and boot while the map stage stages the inputs.
        workers = local_workers_for(options.workers, options.scheduler, (len(volumes), z, y, x))
        try:
            if workers is not None:
                workers.start()
            with self.stage("map"):
                # Moving volumes are mapped by their own voxels (not the resampled ones, which would need
                # the whole volume on the fixed grid in memory), then resampled, mapped and written to the
                # scratch files slab by slab: from here on no volume is held whole in memory.
                mappings = [choose_mapping(v, window=options.window if v.modality == "CT" else None)
                            for v in volumes]
                staged = stage_on_grid(scratch, fixed, [(v, r.transform) for v, r in zip(volumes[1:], registrations)],
                                       mappings)
                # Only geometry and references from here on; in place, as the caller's list holds the pixels too.
                volumes[:] = [_geometry_only_volume(v) for v in volumes]
                del fixed
            with self.stage("fuse", total=z) as advance:
                # The report's weight maps are kept by the fusion pass itself (it does not fuse again).
                self.weight_planes = (WeightPlanes(staged.k, staged.zyx, folder=scratch / "weight-planes")
                                      if options.report else None)
                fuse_staged(staged, options.fusion, workers=options.workers, scheduler=options.scheduler,
                            saliency_scope=options.saliency_scope, progress=advance, local_workers=workers,
                            planes=self.weight_planes)
            arrays = [staged.source(k) for k in range(staged.k)]  # read-only maps of the scratch files
            masks = [None] + [staged.cover(k) for k in range(1, staged.k)]
            colour = None
            if functional is not None:
                with self.stage("colour", total=z) as advance:
                    palette = Palette.hot_iron()
                    indices = palette.indices(arrays[functional])
                    lumas = list(arrays)
                    lumas[functional] = palette.luma(indices)
                    fused_luma = fuse_volume(lumas, masks, options.fusion, workers=options.workers,
                                             scheduler=options.scheduler, saliency_scope=options.saliency_scope,
                                             progress=advance, scratch_dir=scratch, local_workers=workers)
                    del lumas
                    colour = (fused_luma, indices, palette, functional)
            if workers is not None:
                workers.close()  # before writing: the workers' memory is not needed any more
            with self.stage("write"):
                result = self._write(volumes, arrays, masks, staged, registrations, mappings, inputs, colour)
        finally:
            if workers is not None:
                workers.close()
            run_folder.remove()
        return dataclasses.replace(result, timings=dict(self.timings), alignment_warnings=doubts)

    def _write(self, volumes, arrays, masks, staged, registrations, mappings, inputs, colour) -> StudyResult:
        options, out_dir = self.options, self.out_dir
        fixed = volumes[0]
        fused = staged.fused_slices()  # writers read one slice at a time from the scratch file
        staging = staged.folder / "output"  # inside the locked scratch folder, on OUT's file system
        staging.mkdir()
        try:
            provenance = self._provenance(volumes, registrations, mappings, inputs)
            (staging / "transforms").mkdir()
            for number, result in enumerate(registrations, start=1):
                write_transform(result.transform, staging / "transforms" / f"moving{number}_to_fixed.tfm")
            written = written_colour = None
            entropy = options.uid_entropy
            if options.deterministic_uids:
                entropy = hashlib.sha256(json.dumps(
                    [provenance["inputs"], provenance["fusion"], provenance["dispatch"]["saliency_scope"],
                     __version__], sort_keys=True).encode()).hexdigest()
            cited = None
            if "dicom" in options.formats or colour is not None:
                cited = slice_sources(fixed.image, volumes, [None] + [r.transform for r in registrations])
            if "dicom" in options.formats:
                written = write_fused_series(
                    fused, fixed.image, [v.references for v in volumes], staging / "dicom",
                    modalities=[v.modality for v in volumes], provenance_comment=_condensed(provenance),
                    content_datetime=self.started.astimezone(), uid_entropy=entropy, slice_sources=cited,
                )
                provenance["outputs"]["dicom"] = {
                    "folder": "dicom", "series_instance_uid": written.series_instance_uid,
                    "study_instance_uid": written.study_instance_uid, "sop_class_uid": written.sop_class_uid,
                    "series_number": written.series_number, "series_description": written.series_description,
                    "window_center_width": list(written.window), "instances": len(written.sop_instance_uids),
                    "uids": _uid_policy(options),
                    "stored_value": "round(4095 * fused), fused in [0, 1]",
                }
            crash_point("write:dicom")
            if colour is not None:
                fused_luma, indices, palette, functional = colour
                written_colour = write_colour_series(
                    rgb_slices(fused_luma, indices, palette), fixed.image, [v.references for v in volumes],
                    staging / "dicom_colour", modalities=[v.modality for v in volumes],
                    provenance_comment=_condensed(provenance), content_datetime=self.started.astimezone(),
                    uid_entropy=entropy, slice_sources=cited,
                )
                provenance["outputs"]["dicom_colour"] = {
                    "folder": "dicom_colour", "series_instance_uid": written_colour.series_instance_uid,
                    "sop_class_uid": written_colour.sop_class_uid, "series_number": written_colour.series_number,
                    "series_description": written_colour.series_description,
                    "instances": len(written_colour.sop_instance_uids), "uids": _uid_policy(options),
                    "palette": {"name": palette.name, "uid": palette.uid, "source_index": functional},
                    "colour_rule": "functional source through the palette; its BT.601 luma fused with the other "
                                   "sources; fused luma + the functional source's chroma -> RGB 8 bit",
                }
            if "nifti" in options.formats:
                write_nifti(fixed.image, staging / "fused.nii.gz", array=fused)
                provenance["outputs"]["nifti"] = {"file": "fused.nii.gz", "values": "fused intensity in [0, 1], float32"}
            provenance["timings_s"] = dict(self.timings)  # all stages before "write"
            report_path = None
            if options.report:
                from medfuse.study.report import build_report

                provenance["outputs"]["report"] = {"file": "report.html"}
                html = build_report(arrays, masks, staged.fused(), [v.label or v.modality for v in volumes],
                                    self.weight_planes.arrays(), provenance, fixed.image,
                                    colour=colour[:3] if colour is not None else None)
                (staging / "report.html").write_text(html, encoding="utf-8")
                report_path = out_dir / "report.html"
            (staging / "provenance.json").write_text(json.dumps(provenance, indent=2, sort_keys=True, default=str),
                                                     encoding="utf-8")
            if out_dir.exists():
                out_dir.rmdir()  # empty, checked at the start
            _make_readable(staging)
            crash_point("write:rename")
            os.replace(staging, out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return StudyResult(
            out_dir=out_dir,
            dicom_dir=out_dir / "dicom" if written else None,
            nifti_path=out_dir / "fused.nii.gz" if "nifti" in options.formats else None,
            provenance_path=out_dir / "provenance.json",
            report_path=report_path,
            colour_dir=out_dir / "dicom_colour" if written_colour else None,
            series_instance_uid=written.series_instance_uid if written else None,
            study_instance_uid=written.study_instance_uid if written else None,
            timings=dict(self.timings),
        )

    def _provenance(self, volumes, registrations, mappings, inputs) -> dict:
        options = self.options
        model, sha = _model_identity(options.fusion)
        return {
            "medfuse_version": __version__,
            "created_utc": self.started.isoformat(timespec="seconds"),
            "host": {"python": platform.python_version(), "platform": platform.platform()},
            "inputs": [_describe_input(v, role="fixed" if i == 0 else "moving") for i, v in enumerate(volumes)],
            "invocation": inputs,
            "registration": [r.to_dict() for r in registrations],
            "alignment_check": [c.to_dict() for c in self.checks],
            "intensity_mappings": [m.to_dict() for m in mappings],
            "fusion": options.fusion.to_dict(),
            "model": {"name": model, "sha256": sha},
            "dispatch": {
                "slice_axis": "third axis of the fixed grid (its slice stacking direction)",
                "saliency_scope": options.saliency_scope,
                "workers": None if options.scheduler else (options.workers or "default (see dispatch)"),
                "scheduler": options.scheduler,
            },
            "outputs": {},
        }


def slice_sources(grid: sitk.Image, volumes: Sequence[Volume],
                  transforms: Sequence[sitk.Transform | None]) -> list[list[tuple[int, int]]]:
    """For each slice of the fixed grid, the source instances it was derived from.

    Parameters
    ----------
    grid : SimpleITK.Image
        The fixed grid (size X, Y, Z).
    volumes : sequence of Volume
        Fixed first, then the moving volumes (their own grids).
    transforms : sequence of SimpleITK.Transform or None
        Fixed-to-moving transforms (None for the fixed volume: identity).

    Returns
    -------
    list of Z lists of (volume index, instance index)
        Slice z cites the fixed instance z and every moving instance whose
        slice lies between the moving-space slice indices of the corners of
        fixed slice z (one slice of margin for the interpolation). Volumes
        without DICOM references are skipped; a single (multi-frame) instance
        is cited whenever any of its frames is.
    """
    nx, ny, nz = grid.GetSize()
    cited: list[list[tuple[int, int]]] = [[] for _ in range(nz)]
    for index, (volume, transform) in enumerate(zip(volumes, transforms)):
        ref = volume.references
        if ref is None or not ref.instances:
            continue
        n_slices = volume.image.GetSize()[2]
        for z in range(nz):
            corners = [grid.TransformIndexToPhysicalPoint((x, y, z)) for x in (0, nx - 1) for y in (0, ny - 1)]
            if transform is not None:
                corners = [transform.TransformPoint(p) for p in corners]
            k = [volume.image.TransformPhysicalPointToContinuousIndex(p)[2] for p in corners]
            first, last = max(0, int(np.floor(min(k))) - 1), min(n_slices - 1, int(np.ceil(max(k))) + 1)
            if first > last:
                continue
            if len(ref.instances) == n_slices:
                cited[z].extend((index, i) for i in range(first, last + 1))
            else:
                cited[z].append((index, 0))
    return cited


def _uid_policy(options: StudyOptions) -> str:
    if options.uid_entropy is not None:
        return f"derived from uid_entropy {options.uid_entropy!r} (medfuse.io.dicom.write.derived_uid)"
    if options.deterministic_uids:
        return "derived from inputs, options and version"
    return "random (pydicom generate_uid)"


def _geometry_only_volume(volume: Volume) -> Volume:
    """*volume* with its pixels replaced by :func:`_geometry_only` (references, modality, label kept)."""
    return dataclasses.replace(volume, image=_geometry_only(volume.image))


def _geometry_only(image: sitk.Image) -> sitk.Image:
    """A uint8 image with *image*'s size, origin, spacing and direction (a quarter of float32's memory)."""
    geometry = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    geometry.CopyInformation(image)
    return geometry


def _make_readable(folder: Path) -> None:
    """Give the (mkdtemp-private) output folders the permissions the umask allows, like mkdir would."""
    umask = os.umask(0)
    os.umask(umask)
    for path in (folder, *(p for p in folder.rglob("*") if p.is_dir())):
        path.chmod(0o777 & ~umask)


def _describe_input(volume: Volume, role: str) -> dict:
    ref = volume.references
    image = volume.image
    out = {
        "role": role, "label": volume.label, "modality": volume.modality,
        "source": str(volume.source) if volume.source else None,
        "size_xyz": list(image.GetSize()), "spacing_mm": [round(s, 6) for s in image.GetSpacing()],
        "origin_mm": [round(o, 4) for o in image.GetOrigin()],
    }
    if ref is not None:
        out.update({
            "study_instance_uid": ref.study_instance_uid, "series_instance_uid": ref.series_instance_uid,
            "frame_of_reference_uid": ref.frame_of_reference_uid, "series_number": ref.series_number,
            "instances": len(ref.instances),
        })
    return out


def _model_identity(config: FusionConfig) -> tuple[str | None, str | None]:
    """(extractor name, sha256 of its ONNX file) for CNN detail weights; (None, None) otherwise.

    The sha256 is the one :func:`medfuse.features.registry.load_extractor`
    verified the file against when loading it (the registry caches the loaded
    extractor, so this costs no second read or hash of the file).
    """
    if not config.uses_cnn:
        return None, None
    from medfuse.features.registry import load_extractor

    extractor = load_extractor(config.model, config.depth, threads=1)
    return extractor.name, extractor.sha256


def _condensed(provenance: dict) -> str:
    """The provenance in a few hundred characters for ImageComments."""
    short = {
        "medfuse": provenance["medfuse_version"],
        "model": provenance["model"]["name"],
        "model_sha256": (provenance["model"]["sha256"] or "")[:16],
        "fusion": {k: v for k, v in provenance["fusion"].items() if v is not None},
        "saliency_scope": provenance["dispatch"]["saliency_scope"],
        "registration": [{"type": r["transform"]["type"], "optimised": r["optimised"],
                          "rotation_deg": [round(a, 3) for a in r["rotation_deg"]],
                          "translation_mm": [round(t, 3) for t in r["translation_mm"]],
                          "metric_after": round(r["metric_after"], 5)} for r in provenance["registration"]],
        "mappings": [{"method": m["method"], "low": round(m["low"], 3), "high": round(m["high"], 3)}
                     for m in provenance["intensity_mappings"]],
        "sidecar": "provenance.json",
    }
    return json.dumps(short, sort_keys=True, separators=(",", ":"))
