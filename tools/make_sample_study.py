"""Regenerate ``sample_studies/mr-phantom-two-contrasts`` from the shared data.

Source: the GE SIGNA Pioneer 3-D T1 MP-RAGE series of neurolabusc/dcm_qa_ge
(BSD-2-Clause), ``../shared/data/dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22``.
The scan is of a geometric phantom, not a person.

Two series are written, both as MR Image Storage, same patient and study:

* ``series1_t1``: the real T1 series, smoothed and resampled to half the
  in-plane resolution and half the slice count (same origin and direction).
* ``series2_synthetic_contrast``: a synthetic second contrast made from the
  same T1 data by (1) the fixed, non-monotonic intensity curve
  :data:`CONTRAST_KNOTS` (imitating a contrast where mid-grey is bright and
  the brightest T1 structures are dark), and (2) a known rigid motion
  :data:`RIGID_OFFSET` (rotation about the z axis through the volume centre,
  then a translation), resampled onto a coarser grid (3.6 mm slices) with its
  own FrameOfReferenceUID, so registration has real work to do.

The ground truth of registration: with ``T`` the Euler transform built by
:func:`rigid_offset_transform`, the synthetic series satisfies
``synthetic(x) = curve(T1(T(x)))``, so registering the synthetic series
(moving) to the T1 (fixed) must find ``R = T^-1`` in SimpleITK's convention
(``R`` maps a fixed-space point to the moving-space point).

Every UID is made with :func:`pydicom.uid.generate_uid` under pydicom's root
``1.2.826.0.1.3680043.8.498.`` from a fixed entropy source, so running this script twice writes byte-identical files.

Usage::

    python tools/make_sample_study.py [--source DIR] [--out sample_studies/mr-phantom-two-contrasts]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.valuerep import format_number_as_ds
from pydicom.uid import PYDICOM_ROOT_UID, ExplicitVRLittleEndian, MRImageStorage, generate_uid

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO.parent / "shared" / "data" / "dicom" / "ge_mr_t1_mprage" / "05_3D_Ax_T1_MP_RAGE_R22"
OUT = REPO / "sample_studies" / "mr-phantom-two-contrasts"

#: Output grids: (in-plane spacing mm, slice spacing mm, columns/rows).
T1_GRID = (1.875, 2.4, 128)
SYNTHETIC_GRID = (1.875, 3.6, 128)

#: Non-monotonic intensity curve for the synthetic contrast: knots on
#: u = T1 / (99th percentile of T1 inside the phantom), output in [0, 1].
CONTRAST_KNOTS = ((0.0, 0.02, 0.08, 0.2, 0.4, 0.7, 1.0, 100.0), (0.0, 0.0, 0.45, 0.9, 0.6, 0.3, 0.1, 0.1))

#: Rigid offset of the synthetic series: Euler angles (rad) about x, y, z and
#: translation (mm, LPS), about the centre of the T1 volume.
RIGID_OFFSET = {"angles_rad": (0.0, 0.0, 0.07), "translation_mm": (6.0, -4.0, 3.0)}

PATIENT = {
    "PatientName": "Sample^Phantom",
    "PatientID": "MEDFUSE-SAMPLE-01",
    "PatientBirthDate": "",
    "PatientSex": "O",
}


def _uid(*parts: str) -> str:
    """A UID derived deterministically from *parts* under pydicom's UID root."""
    return generate_uid(PYDICOM_ROOT_UID, entropy_srcs=["|".join(("medfuse-sample-study", *parts))])


def read_source(source: Path) -> tuple[sitk.Image, Dataset]:
    """Read the source series with SimpleITK; return it and its first header."""
    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(str(source))
    if not files:
        raise SystemExit(f"no DICOM series in {source}")
    reader.SetFileNames(files)
    image = sitk.Cast(reader.Execute(), sitk.sitkFloat32)
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    return image, header


def resample_to_grid(image: sitk.Image, in_plane: float, slice_spacing: float, size_xy: int,
                     transform: sitk.Transform | None = None) -> sitk.Image:
    """Anti-alias and resample *image* onto a coarser grid with its origin and direction."""
    spacing = (in_plane, in_plane, slice_spacing)
    extent = [n * s for n, s in zip(image.GetSize(), image.GetSpacing())]
    size = (size_xy, size_xy, int(extent[2] // slice_spacing))
    sigmas = [max(0.0, 0.5 * (new - old)) for new, old in zip(spacing, image.GetSpacing())]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigmas) if any(sigmas) else image
    return sitk.Resample(smoothed, size, transform or sitk.Transform(), sitk.sitkLinear,
                         image.GetOrigin(), spacing, image.GetDirection(), 0.0, sitk.sitkFloat32)


def rigid_offset_transform(reference: sitk.Image) -> sitk.Euler3DTransform:
    """The known rigid motion applied to the synthetic series (see module doc)."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in reference.GetSize()])
    transform = sitk.Euler3DTransform()
    transform.SetCenter(centre)
    transform.SetRotation(*RIGID_OFFSET["angles_rad"])
    transform.SetTranslation(RIGID_OFFSET["translation_mm"])
    return transform


def synthetic_contrast(t1: np.ndarray) -> np.ndarray:
    """Apply the non-monotonic curve :data:`CONTRAST_KNOTS` to a T1 array."""
    foreground = t1[t1 > np.percentile(t1, 60)]
    u = t1 / np.percentile(foreground, 99)
    return np.interp(u, *CONTRAST_KNOTS).astype(np.float32)


def _ds(value: float) -> str:
    """*value* as the most precise DS string that fits in 16 characters."""
    return format_number_as_ds(float(value))


def write_series(image: sitk.Image, stored: np.ndarray, out_dir: Path, header: Dataset, *, name: str,
                 series_number: int, description: str, derivation: str, window: tuple[float, float]) -> None:
    """Write a (z, y, x) uint16 array on *image*'s grid as single-frame MR instances."""
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = _uid(name, "series")
    frame_uid = _uid(name, "frame-of-reference")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    iop = [_ds(v) for v in (*direction[:, 0], *direction[:, 1])]
    for z in range(stored.shape[0]):
        sop_uid = _uid(name, "instance", str(z))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = _uid("implementation")
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                        "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
            setattr(ds, keyword, header.get(keyword, ""))
        ds.AccessionNumber = ""
        ds.Modality = "MR"
        ds.Manufacturer = header.get("Manufacturer", "")
        ds.ManufacturerModelName = header.get("ManufacturerModelName", "")
        ds.ReferringPhysicianName = ""
        ds.SeriesDescription = description
        ds.DerivationDescription = derivation
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.BodyPartExamined = "BRAIN"
        for keyword in ("ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType",
                        "MagneticFieldStrength", "PatientPosition"):
            setattr(ds, keyword, header.get(keyword, ""))
        # Timing parameters describe the real T1 acquisition only; the synthetic
        # contrast was not acquired, so its Type 2 timing values are left empty.
        real = name == "t1"
        ds.RepetitionTime = header.RepetitionTime if real else None
        ds.EchoTime = header.EchoTime if real else None
        ds.InversionTime = header.InversionTime if real else None
        ds.EchoTrainLength = header.EchoTrainLength if real else None
        ds.StudyInstanceUID = _uid("study")
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = series_number
        ds.InstanceNumber = z + 1
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = iop
        ds.PixelSpacing = [_ds(image.GetSpacing()[1]), _ds(image.GetSpacing()[0])]
        ds.SliceThickness = _ds(image.GetSpacing()[2])
        ds.SpacingBetweenSlices = _ds(image.GetSpacing()[2])
        ds.SliceLocation = _ds(float(np.dot(direction[:, 2], position)))
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.WindowCenter = _ds(window[0])
        ds.WindowWidth = _ds(window[1])
        ds.PixelData = np.ascontiguousarray(stored[z]).tobytes()
        ds.save_as(out_dir / f"IM{z + 1:04d}.dcm", enforce_file_format=True)


def make_sample(source: Path, out: Path) -> None:
    """Build both series from *source* into *out* (replacing it)."""
    image, header = read_source(source)
    t1 = resample_to_grid(image, T1_GRID[0], T1_GRID[1], T1_GRID[2])
    offset = rigid_offset_transform(image)
    moved = resample_to_grid(image, SYNTHETIC_GRID[0], SYNTHETIC_GRID[1], SYNTHETIC_GRID[2], offset)

    t1_array = np.clip(np.rint(sitk.GetArrayFromImage(t1)), 0, 65535).astype(np.uint16)
    synthetic = synthetic_contrast(sitk.GetArrayFromImage(moved))
    synthetic_array = np.clip(np.rint(synthetic * 4000.0), 0, 65535).astype(np.uint16)

    if out.exists():
        shutil.rmtree(out / "series1_t1", ignore_errors=True)
        shutil.rmtree(out / "series2_synthetic_contrast", ignore_errors=True)
    t1_window = np.percentile(t1_array[t1_array > 0], [1, 99])
    write_series(t1, t1_array, out / "series1_t1", header, name="t1", series_number=1,
                 description="T1 MP-RAGE phantom (downsampled)",
                 derivation="Smoothed and resampled to 1.875x1.875x2.4 mm from GE 3D Ax T1 MP-RAGE (dcm_qa_ge)",
                 window=((t1_window[0] + t1_window[1]) / 2, t1_window[1] - t1_window[0]))
    write_series(moved, synthetic_array, out / "series2_synthetic_contrast", header, name="synthetic", series_number=2,
                 description="SYNTHETIC contrast from T1 (rigidly offset)",
                 derivation="Synthetic: non-monotonic intensity curve of the T1, known rigid offset, 3.6 mm slices",
                 window=(2000.0, 4000.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    make_sample(args.source, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
