"""Hostile and self-contradicting DICOM input (issue 16): refused in one line, never a crash or silent loss.

Every case is built here from a real shared series (a 4-slice Siemens MR,
an 8-frame Philips enhanced MR) by editing headers with pydicom or bytes
directly. Each asserts the exit code, a one-line message naming the file
or folder and the reason, no traceback or internal error, and nothing at
the output path. Cases that attack the parser (lengths, Deflate, nesting)
run in a subprocess under a 1 GiB address-space limit.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hostile_support import assert_refused, copy_series, pixel_element_offset, run_cli, run_limited
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid

from medfuse.errors import SelectionError
from medfuse.io.dicom.index import scan_folder
from medfuse.io.select import find_series, select_series

SERIES = "dicom/d2n_mr_siemens_anat/001"
ENHANCED = "dicom/d2n_mr_philips_enhanced/001"


@pytest.fixture
def series(shared_data) -> Path:
    return shared_data / SERIES


def _convert(capsys, folder: Path, out: Path, *extra) -> tuple[int, str, str]:
    return run_cli(capsys, ["convert", folder, "-o", out, *extra])


def _reason(folder: Path) -> str:
    (info,) = [s for s in scan_folder(folder).series if s.volumes or not s.usable]
    assert not info.usable
    return info.reason


# --- lengths -----------------------------------------------------------------


def test_file_cut_inside_the_pixel_data_length_field(series, tmp_path):
    files = copy_series(series, tmp_path / "in")
    data = files[1].read_bytes()
    files[1].write_bytes(data[: pixel_element_offset(data) + 9])  # tag, VR, 2 reserved, 1 of 4 length bytes
    out = tmp_path / "out.nii.gz"
    message = assert_refused(run_limited(["convert", tmp_path / "in", "-o", out]), 3, str(tmp_path / "in"),
                             files[1].name, "truncated DICOM: the file ends inside a data element", output=out)
    assert "cannot be read, so its volume would miss them" in message


def test_gigabyte_length_field_after_a_valid_meta_header(series, tmp_path):
    source = sorted(series.iterdir())[0]
    folder = tmp_path / "in"
    folder.mkdir()
    target = folder / "liar.dcm"
    # The real file's preamble and file meta, then one explicit-VR element with a 4-byte length:
    # (0008,0005) UN, 3.9 GB declared, 16 bytes present.
    target.write_bytes(source.read_bytes()[:_meta_end(source)] + b"\x08\x00\x05\x00UN\x00\x00"
                       + (0xF0000000).to_bytes(4, "little") + b"x" * 16)
    for argv, code in ((["scan", folder], 3), (["convert", folder, "-o", tmp_path / "o.nii"], 3)):
        message = assert_refused(run_limited(argv), code, str(folder), "liar.dcm", "truncated DICOM")
        assert "no DICOM series found" in message


def test_pixel_data_length_beyond_the_end_of_the_file(series, tmp_path):
    files = copy_series(series, tmp_path / "in")
    data = bytearray(files[2].read_bytes())
    at = pixel_element_offset(bytes(data)) + 8
    data[at:at + 4] = (0x7FFFFFF0).to_bytes(4, "little")
    files[2].write_bytes(bytes(data))
    out = tmp_path / "out.nii.gz"
    assert_refused(run_limited(["convert", tmp_path / "in", "-o", out]), 3, files[2].name,
                   "Pixel Data declares 2147483632 bytes", output=out)


def test_sequences_nested_thousands_deep(series, tmp_path):
    source = sorted(series.iterdir())[0]
    folder = tmp_path / "in"
    folder.mkdir()
    # The real file's preamble and meta, then (0008,1140) SQ of undefined length holding an item of
    # undefined length holding another such sequence ..., 20000 deep.
    opening = b"\x08\x00\x40\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    (folder / "deep.dcm").write_bytes(source.read_bytes()[:_meta_end(source)] + opening * 20000 + closing * 20000)
    assert_refused(run_limited(["scan", folder]), 3, "deep.dcm", "no DICOM series found")
    skipped = dict(scan_folder(folder).skipped)
    assert skipped[folder / "deep.dcm"] == "sequences nested too deeply"


@pytest.mark.parametrize("keyword, value, words", [
    ("NumberOfFrames", 1_000_000_000, "NumberOfFrames 1000000000 is outside"),
    ("Rows", 60000, "truncated DICOM: pixel data has"),
])
def test_header_counts_beyond_what_the_file_holds(series, tmp_path, keyword, value, words):
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, keyword, value) if i == 0 else None)
    out = tmp_path / "out.nii.gz"
    message = assert_refused(run_limited(["convert", tmp_path / "in", "-o", out]), 3, files[0].name, output=out)
    assert words in message


# --- transfer syntaxes ---------------------------------------------------------


def _deflated(series: Path, dst: Path) -> list[Path]:
    def deflate(ds, i):
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return copy_series(series, dst, deflate)


def test_valid_deflated_series_is_read_like_the_original(series, tmp_path, capsys):
    _deflated(series, tmp_path / "deflated")
    plain, deflated = tmp_path / "plain.nii", tmp_path / "deflated.nii"
    assert _convert(capsys, series, plain)[0] == 0
    code, out, err = _convert(capsys, tmp_path / "deflated", deflated)
    assert code == 0, err
    a, b = nib.load(plain), nib.load(deflated)
    assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)


def test_corrupt_deflate_stream(series, tmp_path):
    files = _deflated(series, tmp_path / "in")
    data = bytearray(files[0].read_bytes())
    start = _meta_end(files[0])
    data[start:start + 8] = bytes(8 * [0xFF])  # first block: final, type 3 (reserved, invalid)
    files[0].write_bytes(bytes(data))
    out = tmp_path / "out.nii.gz"
    # The file's series cannot be known, so no series of the folder is read as if complete.
    assert_refused(run_limited(["convert", tmp_path / "in", "-o", out]), 3, str(tmp_path / "in"), files[0].name,
                   "1 DICOM file(s) cannot be read", "corrupt Deflate stream", output=out)
    index = scan_folder(tmp_path / "in")
    (reason,) = [r for p, r in index.skipped if p.name == files[0].name]
    assert reason.startswith("corrupt Deflate stream")
    # fuse-study chooses its series through select: it refuses the folder the same way.
    for choose in (lambda: select_series(index, None), lambda: find_series(index, "4")):
        with pytest.raises(SelectionError) as info:
            choose()
        assert "1 DICOM file(s) cannot be read" in str(info.value) and files[0].name in str(info.value)


def test_deflate_bomb_is_refused_within_memory(series, tmp_path):
    files = _deflated(series, tmp_path / "in")
    data = files[0].read_bytes()
    meta_end = _meta_end(files[0])
    bomb = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = bomb.compress(bytes(100 << 20)) + bomb.flush()  # 100 MiB of zeros in ~100 kB
    (tmp_path / "in" / files[0].name).write_bytes(data[:meta_end] + body)
    result = run_limited(["scan", "--json", tmp_path / "in"], limit=1 << 30)
    assert result[0] == 0, result[2]
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads(result[1])["skipped"]}
    assert skipped[files[0].name].startswith("Deflate stream inflates to more than 64 MiB")


def _meta_end(path: Path) -> int:
    with open(path, "rb") as handle:
        pydicom.filereader.read_preamble(handle, False)
        pydicom.filereader._read_file_meta_info(handle)
        return handle.tell()


def test_unknown_transfer_syntax_uid(series, tmp_path, capsys):
    def unknown(ds, i):
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6.7"
    files = copy_series(series, tmp_path / "in", unknown)
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, str(tmp_path / "in"), output=out)
    assert "unknown transfer syntax UID '1.2.3.4.5.6.7'" in message and files[0].name in message


# --- geometry that cannot be -------------------------------------------------------


@pytest.mark.parametrize("keyword, value, words", [
    ("PixelSpacing", [0, 0], "PixelSpacing 0\\0 is not positive"),
    ("PixelSpacing", [-0.9, 0.9], "PixelSpacing -0.9\\0.9 is not positive"),
    ("ImageOrientationPatient", [1, 0, 0, 1, 0, 0], "row and column directions are parallel"),
    ("ImageOrientationPatient", [0, 0, 0, 0, 1, 0], "zero-length direction"),
    ("ImageOrientationPatient", [1, 0, 0, 0.5, 0.866025, 0], "not perpendicular (60.0°)"),
])
def test_impossible_geometry_is_an_input_error_naming_the_file(series, tmp_path, capsys, keyword, value, words):
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, keyword, value))
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, str(tmp_path / "in"), words, output=out)
    assert any(f.name in message for f in files)
    code, table, err = run_cli(capsys, ["scan", tmp_path / "in"])
    assert code == 0 and words.split(" (")[0] in table.replace("\n", " ") or code == 0, err


@pytest.mark.parametrize("keyword, value, words", [
    ("PixelSpacing", [1e-300, 1e-300], "PixelSpacing 1e-300\\1e-300 mm is outside 0.001-1000 mm"),
    ("PixelSpacing", [1e300, 1e300], "PixelSpacing 1e+300\\1e+300 mm is outside 0.001-1000 mm"),
    ("ImagePositionPatient", [1e7, 0, 0], "ImagePositionPatient 1e+07\\0\\0 is beyond 100000 mm"),
    ("RescaleSlope", "1e38", "take values beyond 1e+30 (float32 would overflow)"),
    ("RescaleIntercept", "1e39", "take values beyond 1e+30 (float32 would overflow)"),
])
def test_values_beyond_what_a_volume_can_hold(series, tmp_path, capsys, keyword, value, words):
    # Before: a 1e-300 mm spacing was an internal error (ITK: singular matrix); 1e300 and 1e38 wrote garbage.
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, keyword, value))
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, str(tmp_path / "in"), words, output=out)
    assert any(f.name in message for f in files)


def test_rows_that_describe_fewer_pixels_than_the_file_holds(series, tmp_path, capsys):
    # Rows 1 with a 256x256 Pixel Data would be read as 1-row images.
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "Rows", 1) if i == 2 else None)
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out), 3, files[2].name,
                   "Pixel Data holds 131072 bytes but Rows, Columns, frames and bits call for 512", output=out)


def test_pixel_spacing_that_differs_in_one_slice(series, tmp_path, capsys):
    copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "PixelSpacing", [2, 2]) if i == 3 else None)
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out), 3, "PixelSpacing differs between slices", output=out)


# --- values that make silent garbage -------------------------------------------------


@pytest.mark.parametrize("slices", [(0, 1, 2, 3), (2,)])
def test_rescale_slope_zero_on_all_or_one_slice(series, tmp_path, capsys, slices):
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "RescaleSlope", 0) if i in slices else None)
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, "RescaleSlope is 0", output=out)
    assert any(files[i].name in message for i in slices)


@pytest.mark.parametrize("text", [b"abc", b"inf", b"NaN"])
def test_rescale_slope_that_is_not_a_finite_number(series, tmp_path, capsys, text):
    files = copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "RescaleSlope", "7.0") if i == 1 else None)
    data = files[1].read_bytes()
    assert data.count(b"7.0 ") == 1
    files[1].write_bytes(data.replace(b"7.0 ", text.ljust(4)[:4]))
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out), 3, files[1].name,
                   "RescaleSlope/RescaleIntercept is not a finite number", output=out)


def test_palette_colour_without_a_lookup_table(series, tmp_path, capsys):
    copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR"))
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out), 3,
                   "PALETTE COLOR (indexed colour) images are not a scalar volume, and the file has no lookup table",
                   output=out)


def test_one_sop_instance_uid_with_two_different_pixel_sets(series, tmp_path, capsys):
    files = copy_series(series, tmp_path / "in")
    ds = pydicom.dcmread(files[1])
    pixels = ds.pixel_array.copy()
    pixels[:10] = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "in" / "zz_other.dcm")
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, output=out)
    assert f"is in two files with different pixels or geometry ({files[1].name}, zz_other.dcm)" in message
    # A byte-identical copy is still just a duplicate, ignored with a note.
    (tmp_path / "in" / "zz_other.dcm").write_bytes(files[1].read_bytes())
    code, _, err = _convert(capsys, tmp_path / "in", out)
    assert code == 0, err


def test_nifti_whose_only_orientation_has_an_infinite_origin(shared_data, tmp_path, capsys):
    img = nib.load(shared_data / "volumes/niivue_chris_PD/chris_PD.nii.gz")
    affine = img.affine.copy()
    affine[0, 3] = np.inf
    broken = nib.Nifti1Image(np.asarray(img.dataobj)[:40, :40, :8], None)
    broken.header.set_sform(affine, code=1)
    broken.header.set_qform(None, code=0)
    path = tmp_path / "inf.nii"
    nib.save(broken, path)
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, path, out), 2, str(path), "sform (code 1) hold non-finite values", output=out)


def test_nifti_with_an_implausible_voxel_size(tmp_path, capsys):
    path = tmp_path / "tiny.nii"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.diag([1e-9, 1e-9, 1e-9, 1])), path)
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, path, out), 2, str(path), "voxel size 1e-09x1e-09x1e-09 mm is outside", output=out)


def test_nifti_that_declares_more_voxels_than_it_holds(shared_data, tmp_path):
    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    path = tmp_path / "short.nii"
    nib.save(img, path)
    data = bytearray(path.read_bytes())
    dims = np.frombuffer(bytes(data[40:56]), "<i2").copy()
    dims[1:4] = 30000
    data[40:56] = dims.tobytes()
    path.write_bytes(bytes(data))
    out = tmp_path / "out.nii.gz"
    assert_refused(run_limited(["convert", path, "-o", out]), 2, str(path), "but the file has", output=out)


# --- data that vanishes silently -------------------------------------------------------


def test_enhanced_file_with_fewer_per_frame_items_than_frames(shared_data, tmp_path, capsys):
    def shorten(ds, i):
        del ds.PerFrameFunctionalGroupsSequence[5:]
    (path,) = copy_series(shared_data / ENHANCED, tmp_path / "in", shorten)
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out), 3, path.name,
                   "Per-frame Functional Groups Sequence has 5 item(s) for 8 frame(s)", output=out)


def test_series_with_two_orientations_is_not_halved_silently(series, tmp_path, capsys):
    def turn(ds, i):
        if i >= 2:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
            ds.ImagePositionPatient = [-100, 10.0 * i, 100]
    copy_series(series, tmp_path / "in", turn)
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, str(tmp_path / "in"), output=out)
    assert "series split by orientation into 2 parts" in message and "--series '4:coronal'" in message
    code, _, err = _convert(capsys, tmp_path / "in", out, "--series", "4:coronal")
    assert code == 0, err
    assert nib.load(out).shape == (256, 256, 2)


def test_enhanced_echoes_with_one_bad_frame_are_not_picked_silently(shared_data, tmp_path, capsys):
    def echoes(ds, i):
        for n, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
            item.MREchoSequence[0].EffectiveEchoTime = 10.0 if n % 2 == 0 else 20.0
        # One frame of the second echo is moved 40 mm away: that echo is unusable.
        ds.PerFrameFunctionalGroupsSequence[3].PlanePositionSequence[0].ImagePositionPatient[0] += 40
    copy_series(shared_data / ENHANCED, tmp_path / "in", echoes)
    out = tmp_path / "out.nii.gz"
    message = assert_refused(_convert(capsys, tmp_path / "in", out), 3, str(tmp_path / "in"), output=out)
    assert "series split by echo into 2 parts: 10.0 (4 slices), 20.0 (4 slices, unusable)" in message
    # The scan shows the echo value as a number, not as the FD element's raw bytes.
    code, table, _ = run_cli(capsys, ["scan", "--json", tmp_path / "in"])
    assert code == 0
    values = [s["split_value"] for st in json.loads(table)["studies"] for s in st["series"]]
    assert values == ["10.0", "20.0"]
    code, _, err = _convert(capsys, tmp_path / "in", out, "--series", "301:10.0")
    assert code == 0, err
    assert nib.load(out).shape == (256, 256, 4)


def test_two_planes_with_one_name_are_numbered(series, tmp_path, capsys):
    def rotate(ds, i):
        if i >= 2:  # rows and columns swapped: still sagittal, another orientation
            ds.ImageOrientationPatient = list(ds.ImageOrientationPatient)[3:] + list(ds.ImageOrientationPatient)[:3]
    copy_series(series, tmp_path / "in", rotate)
    parts = scan_folder(tmp_path / "in").series
    assert [(s.split_value, s.needs_split_choice) for s in parts] == [("sagittal-1", True), ("sagittal-2", True)]
    code, _, err = _convert(capsys, tmp_path / "in", tmp_path / "out.nii", "--series", "4:sagittal-2")
    assert code == 0, err


def test_unknown_part_of_a_split_series_lists_the_parts(series, tmp_path, capsys):
    copy_series(series, tmp_path / "in", lambda ds, i: setattr(ds, "EchoNumbers", 1 + i % 2))
    out = tmp_path / "out.nii.gz"
    assert_refused(_convert(capsys, tmp_path / "in", out, "--series", "4:7"), 3,
                   "series '4' has no part '7'; its parts: '1', '2'", output=out)


def test_new_uids_do_not_hide_a_problem(series, tmp_path, capsys):
    # A well-formed copy with fresh UIDs converts: the refusals above come from the edits, not the copying.
    def fresh(ds, i):
        ds.SOPInstanceUID = generate_uid()
    copy_series(series, tmp_path / "in", fresh)
    code, _, err = _convert(capsys, tmp_path / "in", tmp_path / "out.nii.gz")
    assert code == 0, err
