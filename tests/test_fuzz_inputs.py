"""Seeded fuzzing of real shared DICOM series and NIfTI files through scan, convert and fuse-study (issue 16).

Each variant is a copy of a shared input with one file mutated: truncated,
bits flipped, an element deleted, two elements' values swapped, or an
element's length field replaced (DICOM); truncated, header bytes flipped or
header fields swapped or zeroed (NIfTI). The mutations are drawn from
``random.Random(SEED)``, so every run builds the same variants. Variants run
through ``medfuse scan --json`` and ``medfuse convert`` (NIfTI: convert
only), and a subset through ``medfuse fuse-study``, in two batch
subprocesses at once (one per core), each under a 2 GiB address-space limit.
Every command must end with exit 0 or an input/scan code (2, 3; fuse-study
also 4, a registration refusal), never a traceback, internal error (70) or a
crash; a refusal is one line naming the input (its path or one of its
files; for fuse-study also the series by number or role); a failed convert or
fuse-study leaves nothing at its output path; a successful convert writes a
readable 3-D NIfTI.
"""

from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hostile_support import BATCH_SCRIPT, MEMORY_LIMIT

SEED = 16
#: DICOM bases: shared series, variants drawn per base, extra convert options.
DICOM_BASES = (
    ("dicom/d2n_mr_siemens_anat/001", 90, ()),
    ("dicom/d2n_mr_ge_anat/001", 60, ()),
    ("dicom/d2n_mr_philips_enhanced/001", 50, ()),
    ("dicom/enh_siemens_xa10_fmri/XA10", 40, ("--volume-index", "0")),
)
NIFTI_VARIANTS = 60
FUSE_VARIANTS = 20
FUZZ_MEMORY_LIMIT = 2 * MEMORY_LIMIT  # fuse-study's own peak address space was 1.1 GB when measured



# --- DICOM mutations ---------------------------------------------------------------


def _header_end(data: bytes) -> int:
    at = data.rfind(b"\xe0\x7f\x10\x00")
    return at + 12 if at > 0 else len(data)


def _truncate(rng: random.Random, data: bytes) -> bytes:
    end = _header_end(data)
    cut = rng.randrange(128, end) if rng.random() < 0.7 else rng.randrange(128, len(data))
    return data[:cut]


def _flip_bits(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    end = _header_end(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(132, end) if rng.random() < 0.85 else rng.randrange(132, len(data))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out)


def _length_lie(rng: random.Random, data: bytes) -> bytes:
    """Replace the length field of a random explicit-VR element with a random (often huge) value."""
    out = bytearray(data)
    end = _header_end(data)
    for _ in range(50):
        at = rng.randrange(132, max(133, end - 8))
        vr = bytes(out[at + 4:at + 6])
        if vr.isalpha() and vr.isupper():
            length = rng.choice([0xFFFFFFFE, 0x7FFFFFFF, rng.randrange(1 << 16), len(data) * 4])
            if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"UC", b"UR", b"OD", b"OL", b"OV"):
                out[at + 8:at + 12] = length.to_bytes(4, "little")
            else:
                out[at + 6:at + 8] = (length & 0xFFFF).to_bytes(2, "little")
            return bytes(out)
    return _flip_bits(rng, data)


def _elements(ds: pydicom.Dataset) -> list[tuple[pydicom.Dataset, int]]:
    """(dataset, tag) of every element, inside sequences too (frames' functional groups)."""
    found = []
    for elem in ds:
        found.append((ds, elem.tag))
        if elem.VR == "SQ":
            for item in elem.value[:3]:
                found.extend(_elements(item))
    return found


def _delete_element(rng: random.Random, data: bytes) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    holder, tag = rng.choice(_elements(ds))
    del holder[tag]
    return _saved(ds) or _flip_bits(rng, data)


def _swap_values(rng: random.Random, data: bytes) -> bytes:
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
    elements = [(h, t) for h, t in _elements(ds) if h[t].VR != "SQ" and t != 0x7FE00010]
    (ha, ta), (hb, tb) = rng.sample(elements, 2)
    a, b = ha[ta], hb[tb]
    if a.VR == b.VR:
        a.value, b.value = b.value, a.value
    else:  # across VRs: the raw text of one in the other (e.g. a UID where PixelSpacing belongs)
        text = str(b.value)[:64]
        try:
            a.value = text
        except Exception:
            return _flip_bits(rng, data)
    return _saved(ds) or _flip_bits(rng, data)


def _saved(ds: pydicom.Dataset) -> bytes | None:
    buffer = pydicom.filebase.DicomBytesIO()
    try:
        with pydicom.config.disable_value_validation():
            ds.save_as(buffer, enforce_file_format=False)
    except Exception:
        return None
    return buffer.getvalue()


DICOM_MUTATIONS = (_truncate, _flip_bits, _length_lie, _delete_element, _swap_values)


# --- NIfTI mutations ---------------------------------------------------------------

#: (offset, size) of NIfTI-1 header fields worth breaking: dim, intent, datatype, bitpix, pixdim,
#: vox_offset, scl_slope/inter, qform/sform codes, quatern b-d, offsets, srow_x/y/z.
NIFTI_FIELDS = ((40, 16), (68, 4), (70, 2), (72, 2), (76, 32), (108, 4), (112, 4), (116, 4), (252, 2), (254, 2),
                (256, 12), (268, 12), (280, 16), (296, 16), (312, 16))


def _nifti_variant(rng: random.Random, data: bytes, gz: bool) -> bytes:
    kind = rng.choice(("truncate", "flip", "swap", "zero", "special") if not gz else ("truncate", "flip"))
    out = bytearray(data)
    if kind == "truncate":
        return data[:rng.randrange(0, len(data))]
    if kind == "flip":
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(0, 348 if not gz else len(data))
            out[at] ^= 1 << rng.randrange(8)
        return bytes(out)
    (oa, na), (ob, nb) = rng.sample(NIFTI_FIELDS, 2)
    if kind == "swap":
        n = min(na, nb)
        out[oa:oa + n], out[ob:ob + n] = data[ob:ob + n], data[oa:oa + n]
    elif kind == "zero":
        out[oa:oa + na] = bytes(na)
    else:  # a float field set to inf, nan, a huge or a negative value
        value = rng.choice([np.inf, -np.inf, np.nan, 1e30, -1.0, 0.0])
        slot = oa + 4 * rng.randrange(max(1, na // 4))
        out[slot:slot + 4] = np.float32(value).tobytes()
    return bytes(out)


# --- building the variants -------------------------------------------------------------


def _dicom_variants(shared: Path, root: Path, rng: random.Random) -> list[dict]:
    variants = []
    for base, count, extra in DICOM_BASES:
        files = sorted(p for p in (shared / base).iterdir() if p.is_file())
        for n in range(count):
            folder = root / f"{Path(base).parts[1]}-{n}"
            folder.mkdir(parents=True)
            victim = rng.randrange(len(files))
            mutation = rng.choice(DICOM_MUTATIONS)
            for i, path in enumerate(files):
                if i == victim:
                    (folder / path.name).write_bytes(mutation(rng, path.read_bytes()))
                else:
                    (folder / path.name).symlink_to(path)
            out = root / f"{folder.name}.nii"
            variants.append({"input": folder, "what": f"{base} {mutation.__name__} {files[victim].name}",
                             "commands": [(["scan", "--json", folder], None),
                                          (["convert", folder, "-o", out, *extra], out)]})
    return variants


def _nifti_variants(shared: Path, root: Path, rng: random.Random) -> list[dict]:
    root.mkdir(parents=True)
    img = nib.load(shared / "volumes/niivue_chris_PD/chris_PD.nii.gz")
    small = nib.Nifti1Image(np.asarray(img.dataobj)[60:124, 80:144, 20:32], img.affine, img.header)
    bases = {}
    for suffix in (".nii", ".nii.gz"):
        path = root / f"base{suffix}"
        nib.save(small, path)
        bases[suffix] = path.read_bytes()
    variants = []
    for n in range(NIFTI_VARIANTS):
        suffix = ".nii" if n % 3 else ".nii.gz"
        path = root / f"nifti-{n}{suffix}"
        path.write_bytes(_nifti_variant(rng, bases[suffix], suffix == ".nii.gz"))
        out = root / f"nifti-{n}-out.nii"
        variants.append({"input": path, "what": f"NIfTI {path.name}", "commands": [(["convert", path, "-o", out], out)]})
    return variants


def _fuse_variants(shared: Path, root: Path, rng: random.Random) -> list[dict]:
    """A patient folder of two MR series (copies of one shared series under new UIDs); the fixed one mutated."""
    src = sorted((shared / DICOM_BASES[0][0]).iterdir())
    pair = root / "pair"
    for number, description in ((11, "T1"), (12, "T2")):
        uid = pydicom.uid.generate_uid(entropy_srcs=[f"fuzz-{number}"])
        for i, path in enumerate(src):
            ds = pydicom.dcmread(path)
            ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = uid, number, description
            ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[f"fuzz-{number}-{i}"])
            (pair / str(number)).mkdir(parents=True, exist_ok=True)
            ds.save_as(pair / str(number) / f"{i}.dcm")
    variants = []
    for n in range(FUSE_VARIANTS):
        patient = root / f"patient-{n}"
        (patient / "12").mkdir(parents=True)
        for path in sorted((pair / "12").iterdir()):
            (patient / "12" / path.name).symlink_to(path)
        fixed = sorted((pair / "11").iterdir())
        victim = rng.randrange(len(fixed))
        mutation = rng.choice(DICOM_MUTATIONS)
        (patient / "11").mkdir()
        for i, path in enumerate(fixed):
            if i == victim:
                (patient / "11" / path.name).write_bytes(mutation(rng, path.read_bytes()))
            else:
                (patient / "11" / path.name).symlink_to(path)
        out = root / f"fused-{n}"
        variants.append({"input": patient, "what": f"fuse-study {mutation.__name__} fixed {fixed[victim].name}",
                         "commands": [(["fuse-study", patient, "-o", out, "--fixed", "11", "--moving", "12",
                                        "--workers", "1", "--format", "nifti", "-q"], out)]})
    return variants


def _run_batches(commands: list[list[str]], root: Path, batches: int = 2) -> list[list]:
    """Run *commands* split into *batches* subprocesses at once; results in command order."""
    chunks = [commands[i::batches] for i in range(batches)]
    procs = []
    for i, chunk in enumerate(chunks):
        listing = root / f"batch-{i}.json"
        listing.write_text(json.dumps(chunk))
        procs.append(subprocess.Popen([sys.executable, "-c", BATCH_SCRIPT.format(limit=FUZZ_MEMORY_LIMIT), str(listing)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results: list = [None] * len(commands)
    for i, proc in enumerate(procs):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"fuzz batch {i} died with {proc.returncode}: {err[-3000:]}"
        for j, result in enumerate(json.loads(out)):
            results[i + j * batches] = result
    return results


@pytest.mark.slow
def test_fuzzed_inputs_are_read_or_refused_cleanly(shared_data, tmp_path):
    rng = random.Random(SEED)
    logger = logging.getLogger("pydicom")
    level, logger.level = logger.level, logging.ERROR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid values the mutations write
        variants = (_dicom_variants(shared_data, tmp_path / "dicom", rng)
                    + _nifti_variants(shared_data, tmp_path / "nifti", rng)
                    + _fuse_variants(shared_data, tmp_path / "fuse", rng))
    logger.setLevel(level)
    assert len(variants) >= 300
    commands = [(variant, [str(a) for a in argv], out) for variant in variants for argv, out in variant["commands"]]
    results = _run_batches([argv for _, argv, _ in commands], tmp_path)
    problems, codes = [], {}
    for (variant, argv, out), (code, stdout, stderr, seconds) in zip(commands, results):
        problem = _judge(variant, argv, out, code, stdout, stderr)
        codes[(argv[0], code)] = codes.get((argv[0], code), 0) + 1
        if problem:
            problems.append(f"{variant['what']}: medfuse {' '.join(argv[:1])}: {problem}")
    print(f"{len(variants)} variants, {len(commands)} commands; (command, exit code): counts {sorted(codes.items())}")
    assert not problems, "\n".join(problems[:20])
    # The mutations reach both outcomes in every command: accepted variants and refused ones.
    for command in ("scan", "convert", "fuse-study"):
        assert any(n for (c, code), n in codes.items() if c == command and code == 0), command
    for command in ("convert", "fuse-study"):
        assert any(n for (c, code), n in codes.items() if c == command and code != 0), command


def _judge(variant: dict, argv: list[str], out: str | None, code: int, stdout: str, stderr: str) -> str:
    """'' when the outcome meets the rules, else what is wrong."""
    command = argv[0]
    allowed = {"scan": {0, 3}, "convert": {0, 2, 3}, "fuse-study": {0, 2, 3, 4}}[command]
    if "Traceback" in stderr or "internal error" in stderr or code == 70:
        return f"crashed (exit {code}): {stderr.strip()[-400:]}"
    if code not in allowed:
        return f"exit {code} not in {sorted(allowed)}: {stderr.strip()[-300:]}"
    if code == 0:
        if command == "scan":
            json.loads(stdout)
        elif command == "convert":
            shape = nib.load(out).shape
            if len(shape) != 3:
                return f"convert wrote shape {shape}"
        elif not (Path(out) / "fused.nii.gz").is_file():
            return "fuse-study exited 0 without its output"
        return ""
    lines = stderr.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith("medfuse: error: "):
        return f"not one error line: {stderr.strip()[-400:]}"
    message = lines[0]
    if not _names_the_input(message, Path(variant["input"]), command):
        return f"message does not name the input: {message}"
    if out is not None and Path(out).exists():
        return f"output {out} exists after exit {code}"
    return ""


def _names_the_input(message: str, where: Path, command: str) -> bool:
    """The message names the input: its path, one of its files, or (fuse-study) the series by number or role."""
    names = {where.name, str(where)} | {p.name for p in where.rglob("*")} if where.is_dir() else {str(where)}
    if any(name in message for name in names):
        return True
    return command == "fuse-study" and any(word in message for word in ("series '11'", "series 11", "fixed "))
