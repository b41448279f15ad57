"""read_series on every shared DICOM series, checked against SimpleITK and dcm2niix.

Geometry is compared in world space: the corners of our voxel grid must land
on voxel centres of the other reader's grid (which may be flipped or
permuted, as dcm2niix's is), within 1e-3 mm, and the voxel values at the
matched indices must agree.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import JPEG2000Lossless, generate_uid

from medfuse.errors import SeriesReadError
from medfuse.io.dicom.index import scan_folder
from medfuse.io.dicom.read import read_series
from medfuse.io.nifti import RAS_LPS_FLIP, lps_affine

#: Every series folder the reader must read (the others are refused; see test_dicom_index.py).
_BIG = pytest.mark.slow  # 130-234 files, or 101 slices of 512x512: a few seconds each
READABLE = [
    "dicom/d2n_mr_ge_anat/001",
    "dicom/d2n_mr_siemens_anat/001",
    "dicom/d2n_mr_philips_enhanced/001",
    "dicom/d2n_mr_siemens_multiframe/001",
    "dicom/enh_siemens_xa10_fmri/XA10",
    pytest.param("dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22", marks=_BIG),
    pytest.param("volumes/tcia_CCTH-A01_pet_ct/CT_images", marks=_BIG),
    pytest.param("volumes/tcia_CCTH-A01_pet_ct/PET_images", marks=_BIG),
]
REFUSED = {
    "dicom/d2n_ct_ge_sliceincrement/001": "missing slices",
    "dicom/d2n_ct_siemens_gantrytilt/001": "gantry tilt 14.0°",
    "dicom/qa_siemens_orientation/axasc35": "Siemens mosaic",
    "dicom/qa_siemens_orientation/corasc35": "Siemens mosaic",
    "dicom/qa_siemens_orientation/sagasc35": "Siemens mosaic",
}
WORLD_TOLERANCE_MM = 1e-3
DIRECTION_TOLERANCE = 1e-4


def _image_series(folder: Path):
    series = [s for s in scan_folder(folder).series if s.volumes]
    assert len(series) == 1, [s.label for s in series]
    return series[0]


_READ_CACHE: dict[Path, tuple] = {}


def _read(folder: Path):
    """(SeriesInfo, Volume) for a shared folder, read once per test session."""
    if folder not in _READ_CACHE:
        series = _image_series(folder)
        _READ_CACHE[folder] = (series, read_series(series, volume_index=0 if series.n_volumes > 1 else None))
    return _READ_CACHE[folder]


def _xyz(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0)


def _assert_close(actual: np.ndarray, expected: np.ndarray, *, rtol: float, atol: float) -> None:
    """Like assert_allclose, but fast on 26 M voxels (contiguous, one pass)."""
    actual = np.ascontiguousarray(actual, dtype=np.float64)
    expected = np.ascontiguousarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    excess = np.abs(actual - expected) - (atol + rtol * np.abs(expected))
    worst = int(np.argmax(excess))
    assert excess.flat[worst] <= 0, (
        f"voxel {np.unravel_index(worst, actual.shape)}: {actual.flat[worst]} vs {expected.flat[worst]}"
    )


def _onto_grid(ours: np.ndarray, theirs: np.ndarray, their_data: np.ndarray, shape):
    """Map another reader's (x, y, z) array onto our index grid via both LPS affines.

    Returns the re-indexed array, the largest world distance (mm) between our
    grid corners and the voxel centres they map to, and how far the index
    map is from a signed permutation.
    """
    index_map = np.linalg.inv(theirs) @ ours
    rotation = np.round(index_map[:3, :3])
    shift = np.round(index_map[:3, 3])
    perm = [int(np.argmax(np.abs(rotation[:, a]))) for a in range(3)]
    out = np.transpose(their_data, perm)
    for axis in range(3):
        if rotation[perm[axis], axis] < 0:
            out = np.flip(out, axis)
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)]).T
    mapped = np.vstack([rotation @ corners[:3] + shift[:, None], np.ones(8)])
    world_error = np.abs((ours @ corners)[:3] - (theirs @ mapped)[:3]).max()
    return out, world_error, np.abs(index_map[:3, :3] - rotation).max()


@pytest.fixture(scope="module")
def dcm2niix_dir(tmp_path_factory):
    if shutil.which("dcm2niix") is None:
        pytest.skip("dcm2niix not installed (Debian package dcm2niix; tools/test.sh installs it)")
    root = tmp_path_factory.mktemp("dcm2niix")
    done = {}

    def convert(folder: Path) -> Path:
        if folder not in done:
            out = root / f"s{len(done)}"
            out.mkdir()
            subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "%s_%e", "-o", str(out), str(folder)],
                           check=True, capture_output=True, timeout=120)
            done[folder] = sorted(out.glob("*.nii"))[0]
        return done[folder]

    return convert


@pytest.mark.parametrize("relpath", READABLE)
def test_geometry_matches_simpleitk(shared_data, relpath):
    folder = shared_data / relpath
    series, volume = _read(folder)
    if series.instances[0].is_multiframe:
        # GDCM reads one enhanced multi-frame file as a volume by itself.
        reference = sitk.ReadImage(str(series.volumes[0][0].instance.path))
    else:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series.series_instance_uid))
        reference = reader.Execute()
    image = volume.image
    assert image.GetPixelID() == sitk.sitkFloat32
    assert image.GetSize() == reference.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=WORLD_TOLERANCE_MM)
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing(), atol=WORLD_TOLERANCE_MM)
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=DIRECTION_TOLERANCE)
    # SimpleITK applies the rescale in float64 (per slice for PET); ours is float32.
    _assert_close(sitk.GetArrayViewFromImage(image), sitk.GetArrayViewFromImage(reference), rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("relpath", READABLE)
def test_geometry_and_values_match_dcm2niix(shared_data, dcm2niix_dir, relpath):
    folder = shared_data / relpath
    series, volume = _read(folder)
    nifti = nib.load(str(dcm2niix_dir(folder)))
    data = nifti.get_fdata(dtype=np.float32)
    if data.ndim == 4:
        data = data[..., 0]
    ours = _xyz(volume.image)
    theirs, world_error, off_grid = _onto_grid(lps_affine(volume.image), RAS_LPS_FLIP @ nifti.affine, data,
                                               ours.shape)
    assert off_grid < DIRECTION_TOLERANCE
    assert theirs.shape == ours.shape
    if relpath.endswith("PET_images"):
        # Slice gaps vary by up to 0.08 mm here; dcm2niix takes the first gap
        # (3.27 mm) as the spacing, we take (last - first) / (n - 1) like
        # SimpleITK, so the far end differs by n x 8.6e-5 mm.
        assert world_error < 0.025
    else:
        assert world_error < WORLD_TOLERANCE_MM
    if "philips" in relpath:
        # dcm2niix applies Philips' private scale slope (2005,100E) on top of
        # RescaleSlope (PMC3998685): the values are proportional, not equal.
        slope, intercept = np.polyfit(theirs.ravel(), ours.ravel(), 1)
        assert slope > 0
        _assert_close(slope * theirs + intercept, ours, rtol=0, atol=1e-3 * ours.max())
    else:
        _assert_close(ours, theirs, rtol=1e-5, atol=1e-3)


def test_pet_per_slice_rescale_kept_in_float32(shared_data):
    folder = shared_data / "volumes/tcia_CCTH-A01_pet_ct/PET_images"
    series, volume = _read(folder)
    slopes = [ref.frame.slope for ref in series.volumes[0]]
    assert max(slopes) / min(slopes) > 10  # the header really varies per slice
    # The slice with the largest slope, decoded here from its own file.
    z = int(np.argmax(slopes))
    ds = pydicom.dcmread(series.volumes[0][z].instance.path)
    expected = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(volume.image)[z], expected, rtol=1e-6)
    assert volume.references.extra["Units"] == "BQML"


def test_references_cite_every_instance_in_slice_order(shared_data):
    folder = shared_data / "volumes/tcia_CCTH-A01_pet_ct/CT_images"
    series, volume = _read(folder)
    refs = volume.references
    assert len(refs.instances) == 101
    z_of = {}
    for path in folder.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        z_of[ds.SOPInstanceUID] = float(ds.ImagePositionPatient[2])
    z = [z_of[i.sop_instance_uid] for i in refs.instances]
    assert z == sorted(z)
    assert refs.modality == "CT" and refs.series_number == 3
    assert refs.frame_of_reference_uid and refs.study_instance_uid
    assert refs.patient_study["PatientID"] == "CCTH-A01"
    assert refs.equipment["Manufacturer"]
    assert volume.label.startswith("CT CT 2.5MM STD")


@pytest.mark.parametrize("relpath,reason", sorted(REFUSED.items()))
def test_refused_series_raise_with_reason(shared_data, relpath, reason):
    with pytest.raises(SeriesReadError, match=reason):
        read_series(shared_data / relpath)


def test_4d_series_needs_a_volume_index(shared_data):
    folder = shared_data / "dicom/enh_siemens_xa10_fmri/XA10"
    with pytest.raises(SeriesReadError, match="4-D series: 4 volumes"):
        read_series(folder)
    volumes = [read_series(folder, volume_index=i) for i in (0, 3)]
    assert volumes[0].image.GetSize() == (64, 64, 6)
    assert volumes[0].image.GetOrigin() == volumes[1].image.GetOrigin()
    assert not np.array_equal(sitk.GetArrayViewFromImage(volumes[0].image),
                              sitk.GetArrayViewFromImage(volumes[1].image))
    with pytest.raises(SeriesReadError, match="out of range"):
        read_series(folder, volume_index=4)


def test_folder_with_two_series_asks_which(shared_data):
    with pytest.raises(SeriesReadError, match="2 image series; pick one"):
        read_series(shared_data / "volumes/tcia_CCTH-A01_pet_ct")


def _copy_series(src: Path, dst: Path, transfer_syntax=None) -> list[Path]:
    dst.mkdir()
    out = []
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        out.append(dst / path.name)
        ds.save_as(out[-1])
    return out


def test_jpeg2000_series_decodes_like_the_uncompressed_one(shared_data, tmp_path):
    src = shared_data / "dicom/d2n_mr_siemens_anat/001"
    _copy_series(src, tmp_path / "j2k", JPEG2000Lossless)
    compressed = read_series(tmp_path / "j2k")
    plain = read_series(src)
    assert pydicom.dcmread(next((tmp_path / "j2k").iterdir())).file_meta.TransferSyntaxUID == JPEG2000Lossless
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(compressed.image),
                                  sitk.GetArrayViewFromImage(plain.image))
    assert compressed.image.GetOrigin() == plain.image.GetOrigin()


def test_syntax_without_decoder_names_the_package(shared_data, tmp_path):
    # JPEG Lossless SV1 needs GDCM or the GPL pylibjpeg-libjpeg; neither is a
    # dependency. Pixel bytes are left as they are: the refusal must come
    # from the header, before any decoding is attempted.
    files = _copy_series(shared_data / "dicom/d2n_mr_siemens_anat/001", tmp_path / "jls")
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8" + b"\x00" * 64 + b"\xff\xd9"])
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(path, enforce_file_format=True)
    series = _image_series(tmp_path / "jls")
    assert not series.usable
    assert "no decoder installed (pip install python-gdcm)" in series.reason
    with pytest.raises(SeriesReadError, match="python-gdcm"):
        read_series(series)


def test_bits_above_bits_stored_are_ignored(shared_data, tmp_path):
    # 12 of 16 bits stored: anything in the top 4 bits (old overlay planes)
    # is not part of the value; pydicom masks it, and so must the fast path.
    src = shared_data / "dicom/d2n_mr_siemens_anat/001"
    files = _copy_series(src, tmp_path / "overlay")
    for path in files:
        ds = pydicom.dcmread(path)
        assert (ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation) == (16, 12, 0)
        raw = np.frombuffer(ds.PixelData, "<u2") | np.uint16(0xA000)
        ds.PixelData = raw.tobytes()
        ds.save_as(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_series(tmp_path / "overlay").image),
                                  sitk.GetArrayFromImage(read_series(src).image))


def test_bare_datasets_without_file_meta_are_read(shared_data, tmp_path):
    # Older exports store the dataset alone: no preamble, no "DICM", no file
    # meta; the encoding (here implicit VR little endian) must be inferred.
    from pydicom.filebase import DicomFileLike
    from pydicom.filewriter import write_dataset

    src = shared_data / "dicom/d2n_mr_siemens_anat/001"
    (tmp_path / "bare").mkdir()
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        del ds.file_meta
        with open(tmp_path / "bare" / path.name, "wb") as handle:
            out = DicomFileLike(handle)
            out.is_little_endian, out.is_implicit_VR = True, True
            write_dataset(out, ds)
    with pytest.raises(pydicom.errors.InvalidDicomError):
        pydicom.dcmread(next((tmp_path / "bare").iterdir()))
    series = _image_series(tmp_path / "bare")
    assert series.usable and series.transfer_syntax_uid == "1.2.840.10008.1.2"
    bare, plain = read_series(series), read_series(src)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(bare.image), sitk.GetArrayViewFromImage(plain.image))
    assert bare.image.GetOrigin() == plain.image.GetOrigin()
    assert bare.references.series_instance_uid == plain.references.series_instance_uid
