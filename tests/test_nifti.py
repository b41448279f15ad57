"""NIfTI read/write: RAS <-> LPS, round trips, DICOM -> NIfTI world coordinates."""

from __future__ import annotations

import gzip
import os
import stat
import tracemalloc
import zlib

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import medfuse.io.nifti as nifti_module
from medfuse.errors import InputError, WriteError
from medfuse.io.nifti import RAS_LPS_FLIP, ras_affine, read_nifti, write_nifti
from medfuse.io.volumes import load_volume, replace_non_finite

NIFTI_FILES = [
    "volumes/niivue_chris_PD/chris_PD.nii.gz",
    "volumes/niivue_MR_Gd/MR_Gd.nii.gz",
    "volumes/tcia_TCGA-FG-6692_t1_t1c_t2_flair/"
    "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz",
]


@pytest.mark.parametrize("relpath", NIFTI_FILES)
def test_read_matches_simpleitk_and_round_trips(shared_data, tmp_path, relpath):
    path = shared_data / relpath
    volume = read_nifti(path)
    # SimpleITK's own NIfTI reader is the independent LPS reference.
    reference = sitk.ReadImage(str(path))
    np.testing.assert_allclose(volume.image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(volume.image.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(volume.image.GetDirection(), reference.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(volume.image),
                                  sitk.GetArrayViewFromImage(reference).astype(np.float32))
    # read -> write -> read keeps the affine and the voxels.
    original = nib.load(str(path))
    written = write_nifti(volume, tmp_path / "out.nii.gz")
    again = nib.load(str(written))
    np.testing.assert_allclose(again.affine, original.affine, atol=1e-5)
    np.testing.assert_array_equal(again.get_fdata(dtype=np.float32), original.get_fdata(dtype=np.float32))
    assert int(again.header["sform_code"]) == 1 and int(again.header["qform_code"]) == 1
    back = read_nifti(written)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back.image), sitk.GetArrayViewFromImage(volume.image))


def test_gzip_output_is_byte_identical_across_writes(shared_data, tmp_path):
    volume = read_nifti(shared_data / NIFTI_FILES[0])
    first = write_nifti(volume, tmp_path / "a.nii.gz").read_bytes()
    second = write_nifti(volume, tmp_path / "b.nii.gz").read_bytes()
    assert first == second


def test_dicom_to_nifti_voxel_lands_at_the_dicom_position(shared_data, tmp_path):
    # An oblique series, so a wrong sign or axis order cannot cancel out.
    folder = shared_data / "dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22"
    volume = load_volume(folder)
    nifti = nib.load(str(write_nifti(volume, tmp_path / "mr.nii")))
    i, j, k = 120, 140, 70  # column, row, slice (inside the head)
    # DICOM side, from the k-th file along the slice normal, read here directly.
    first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    normal = np.cross(np.array(first.ImageOrientationPatient[:3], float),
                      np.array(first.ImageOrientationPatient[3:], float))
    along = sorted((float(np.dot(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient, normal)), p)
                   for p in folder.iterdir())
    ds = pydicom.dcmread(along[k][1])
    row_dir = np.array(ds.ImageOrientationPatient[:3], float)
    col_dir = np.array(ds.ImageOrientationPatient[3:], float)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    lps = np.array(ds.ImagePositionPatient, float) + i * col_spacing * row_dir + j * row_spacing * col_dir
    ras = nifti.affine @ np.array([i, j, k, 1.0])
    np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-3)
    value = float(ds.pixel_array[j, i]) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    assert value > 0
    assert nifti.get_fdata(dtype=np.float32)[i, j, k] == value


def test_ras_lps_flip_is_explicit():
    image = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    image.SetOrigin((10.0, -20.0, 30.0))
    image.SetSpacing((1.0, 2.0, 3.0))
    affine = ras_affine(image)
    np.testing.assert_allclose(affine[:3, 3], [-10.0, 20.0, 30.0])
    np.testing.assert_allclose(np.diag(affine)[:3], [-1.0, -2.0, 3.0])
    np.testing.assert_array_equal(RAS_LPS_FLIP @ RAS_LPS_FLIP, np.eye(4))


def _write_raw(tmp_path, data, affine=None, name="x.nii.gz"):
    path = tmp_path / name
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def test_4d_needs_a_volume_index(tmp_path):
    data = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    path = _write_raw(tmp_path, data)
    with pytest.raises(InputError, match="4-D file with 5 volumes"):
        read_nifti(path)
    third = read_nifti(path, volume_index=2)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(third.image), data[..., 2].transpose(2, 1, 0))
    with pytest.raises(InputError, match="out of range"):
        read_nifti(path, volume_index=5)


def test_sheared_affine_is_refused(tmp_path):
    affine = np.eye(4)
    affine[1, 2] = 0.3  # z steps move y: a gantry-tilt shear
    with pytest.raises(InputError, match="shear"):
        read_nifti(_write_raw(tmp_path, np.zeros((3, 3, 3), np.float32), affine))


def test_bad_inputs_are_clear(tmp_path):
    bogus = tmp_path / "bogus.nii.gz"
    bogus.write_text("not nifti")
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_nifti(bogus)
    with pytest.raises(InputError, match="no such file"):
        load_volume(tmp_path / "missing.nii")
    image = sitk.Image(2, 2, 2, sitk.sitkFloat32)
    with pytest.raises(WriteError, match="must end in"):
        write_nifti(image, tmp_path / "out.mha")


def test_non_finite_voxels_are_replaced_by_the_documented_rule(tmp_path):
    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3) + 5
    data[0, 0, 0] = np.nan
    data[1, 1, 1] = np.inf
    data[2, 2, 2] = -np.inf
    volume = read_nifti(_write_raw(tmp_path, data))
    fixed, report = replace_non_finite(volume)
    assert (report.nan, report.pos_inf, report.neg_inf) == (1, 1, 1)
    finite = data[np.isfinite(data)]
    out = sitk.GetArrayViewFromImage(fixed.image).transpose(2, 1, 0)
    assert out[0, 0, 0] == finite.min() and out[2, 2, 2] == finite.min() and out[1, 1, 1] == finite.max()
    assert np.isfinite(out).all()
    assert fixed.image.GetOrigin() == volume.image.GetOrigin()


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_file_gets_the_permissions_open_would_give(tmp_path, suffix, umask):
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32))
    previous = os.umask(umask)
    try:
        written = write_nifti(image, tmp_path / f"fused{suffix}")
        plain = tmp_path / "plain.txt"
        with open(plain, "w"):
            pass
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([written.name, "plain.txt"])  # no temporary left


def test_failed_write_leaves_neither_output_nor_temporary(tmp_path, monkeypatch):
    image = sitk.GetImageFromArray(np.ones((2, 3, 4), np.float32))
    target = write_nifti(image, tmp_path / "fused.nii.gz")
    before = target.read_bytes()

    def disk_full(nifti, slices, dtype, stream):  # fails half-way, after the header
        nifti.header.write_to(stream)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("medfuse.io.nifti._write_single_file", disk_full)
    with pytest.raises(WriteError, match="No space left"):
        write_nifti(sitk.GetImageFromArray(np.zeros((2, 3, 4), np.float32)), target)
    assert target.read_bytes() == before  # the earlier output is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["fused.nii.gz"]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_write_streams_without_a_full_size_copy(tmp_path, suffix):
    # 64 x 128 x 128 float32 = 4 MiB; one slice is 64 KiB. numpy and bytes
    # allocations are traced, so a transposed copy or an in-memory file would show.
    data = np.random.default_rng(3).standard_normal((64, 128, 128), dtype=np.float32)
    image = sitk.GetImageFromArray(data)
    tracemalloc.start()
    try:
        written = write_nifti(image, tmp_path / f"big{suffix}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < data.nbytes / 8
    np.testing.assert_array_equal(nib.load(written).get_fdata(dtype=np.float32), data.transpose(2, 1, 0))


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint8])
def test_streamed_file_equals_nibabel_writing_the_whole_array(tmp_path, dtype):
    """Header from a stand-in and voxels slice by slice: the bytes nibabel writes from the whole array.

    Also when the voxels come as a list of slices on another image's grid (how fuse-study writes the
    fused volume from its scratch file).
    """
    data = (np.random.default_rng(5).random((6, 9, 11)) * 120).astype(dtype)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.5, 0.7, 2.0))
    image.SetOrigin((1.0, -2.0, 3.5))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    affine = ras_affine(image)
    reference = nib.Nifti1Image(data.transpose(2, 1, 0), affine)
    reference.set_sform(affine, code=1)
    reference.set_qform(affine, code=1)
    reference.header.set_xyzt_units(xyz="mm")
    nib.save(reference, tmp_path / "nibabel.nii")
    grid = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    grid.CopyInformation(image)
    ours = write_nifti(image, tmp_path / "ours.nii")
    from_slices = write_nifti(grid, tmp_path / "slices.nii", array=[plane for plane in data])
    expected = (tmp_path / "nibabel.nii").read_bytes()
    assert ours.read_bytes() == expected
    assert from_slices.read_bytes() == expected
    with pytest.raises(WriteError, match="do not fit the grid"):
        write_nifti(grid, tmp_path / "short.nii", array=[plane for plane in data[:-1]])


@pytest.mark.parametrize("shape", [(40, 64, 48), (3, 5, 7)])
def test_gzip_bytes_do_not_depend_on_threads_and_any_reader_reads_them(tmp_path, shape):
    """The .nii.gz is compressed piece by piece in threads: same bytes for 1, 2 and 3 threads, one gzip
    member whose content is the .nii file, read back by nibabel and SimpleITK."""
    data = (np.random.default_rng(7).random(shape) * np.linspace(0, 1, shape[2])).astype(np.float32)
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((0.8, 0.9, 2.5))
    written = {threads: write_nifti(image, tmp_path / f"t{threads}.nii.gz", threads=threads).read_bytes()
               for threads in (1, 2, 3)}
    assert written[1] == written[2] == written[3]
    plain = write_nifti(image, tmp_path / "plain.nii").read_bytes()
    inflate = zlib.decompressobj(wbits=31)  # gzip: checks the header, the CRC-32 and the size
    assert inflate.decompress(written[1]) == plain
    assert inflate.eof and inflate.unused_data == b""  # one member, nothing after it
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "t2.nii.gz"))), data)
    np.testing.assert_array_equal(np.asarray(nib.load(tmp_path / "t2.nii.gz").dataobj).transpose(2, 1, 0), data)


def test_large_volumes_are_compressed_in_threads_by_default(tmp_path, monkeypatch):
    threads_used = []
    real = nifti_module.PieceGzipWriter

    def spy(fileobj, level, threads=1):
        threads_used.append(threads)
        return real(fileobj, level, threads)

    monkeypatch.setattr(nifti_module, "PieceGzipWriter", spy)
    monkeypatch.setattr(nifti_module, "_cpu_count", lambda: 2)
    monkeypatch.setattr(nifti_module, "PARALLEL_GZIP_MIN_BYTES", 4 * 8 * 8 * 4)
    write_nifti(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), tmp_path / "large.nii.gz")
    write_nifti(sitk.GetImageFromArray(np.zeros((3, 8, 8), np.float32)), tmp_path / "small.nii.gz")
    assert threads_used == [2, 1]


def test_gzip_reader_reads_members_in_a_row_and_refuses_a_truncated_file(tmp_path, monkeypatch):
    monkeypatch.setattr(nifti_module.GzipReader, "PIECE", 1000)  # many pieces in a small file
    parts = [np.random.default_rng(i).integers(0, 9, 5000, dtype=np.uint8).tobytes() for i in range(3)]
    joined = tmp_path / "members.gz"
    joined.write_bytes(b"".join(gzip.compress(p, mtime=0) for p in parts) + b"\0" * 7)  # padding, as tape tools add
    with nifti_module.GzipReader(joined) as stream:
        assert stream.read(10) == parts[0][:10]
        stream.seek(0)
        assert stream.read(4) == parts[0][:4]
        stream.seek(12000)  # forward over pieces and a member boundary
        assert stream.read(100) == b"".join(parts)[12000:12100]
        stream.seek(20)  # backward beyond the piece in hand: from the start again
        assert stream.read() == b"".join(parts)[20:]
    truncated = tmp_path / "truncated.gz"
    truncated.write_bytes(gzip.compress(parts[0], mtime=0)[:-100])
    with nifti_module.GzipReader(truncated) as stream, pytest.raises(EOFError):
        stream.read()
    corrupt = bytearray(gzip.compress(parts[0], mtime=0))
    corrupt[-6] ^= 0xFF  # CRC-32
    (tmp_path / "corrupt.gz").write_bytes(bytes(corrupt))
    with nifti_module.GzipReader(tmp_path / "corrupt.gz") as stream, pytest.raises(zlib.error):
        stream.read()
