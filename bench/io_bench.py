"""Benchmark: index 1,000 DICOM files and read a 512x512x300 series, against baselines.

Run by hand (not a test):  python bench/io_bench.py [--shared ../shared/data] [--repeat 3]

Both data sets are built in a temporary folder from the shared PET/CT
patient: 1,000 PET slice files (four series of 250, new UIDs and positions)
and 300 CT slices of 512x512 (the 101 shared slices cycled, new UIDs, a
regular 2.5 mm stack). Baselines, measured in the same run on the same files:

* indexing — SimpleITK/GDCM's series scan (``GetGDCMSeriesIDs`` then
  ``GetGDCMSeriesFileNames`` per series), and pydicom full reads;
* reading — SimpleITK ``ImageSeriesReader``;
* writing the read volume (float32) as ``.nii.gz`` — :func:`medfuse.io.nifti.write_nifti`
  with 1 and 2 threads (same bytes), against one zlib stream through
  :class:`gzip.GzipFile` at the same level (the writer before issue 14);
  and reading it back with :func:`medfuse.io.nifti.read_nifti`;
* writing the read CT as a derived DICOM series —
  :func:`medfuse.io.dicom.write.write_fused_series` (each slice citing its
  CT instance, as ``fuse-study`` does), against the same call with every
  instance written by ``pydicom.dcmwrite`` of its full dataset (the writer
  before the tenth round); the two must give byte-identical files. CPU time
  (``time.process_time``) per slice, median of ``--repeat`` runs, alternating.

The best of ``--repeat`` runs is printed, with the ratio to each baseline
and the target (index <= 2 s, read <= 3 s). ``--dicom-write-only`` runs only
the last section (it still builds and reads the CT stack).
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path
from unittest import mock

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.uid import generate_uid

from medfuse.io.dicom.index import scan_folder
from medfuse.io.dicom.instances import SeriesEncoder
from medfuse.io.dicom.read import read_series
from medfuse.io.dicom.write import write_fused_series
from medfuse.io.nifti import GZIP_LEVEL, read_nifti, write_nifti

INDEX_FILES = 1000
READ_SLICES = 300
INDEX_TARGET_S = 2.0
READ_TARGET_S = 3.0


def _shared_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    env = os.environ.get("MEDFUSE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def _templates(folder: Path, modality: str) -> list[pydicom.Dataset]:
    out = []
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if ds.get("Modality") == modality and "PixelData" in ds:
            out.append(ds)
    out.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return out


def _write_stack(templates, out_dir: Path, n_slices: int, spacing: float, series_number: int) -> None:
    out_dir.mkdir(parents=True)
    series_uid = generate_uid()
    for k in range(n_slices):
        ds = templates[k % len(templates)]
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        x, y, _ = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(k * spacing, 4)]
        ds.SliceLocation = round(k * spacing, 4)
        ds.save_as(out_dir / f"IM{k:05d}.dcm")


def _best(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _gdcm_scan(folder: Path) -> None:
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        reader = sitk.ImageSeriesReader
        for uid in reader.GetGDCMSeriesIDs(str(sub)):
            reader.GetGDCMSeriesFileNames(str(sub), uid)


def _pydicom_full(folder: Path) -> None:
    for path in folder.rglob("*.dcm"):
        pydicom.dcmread(path)


def _sitk_read(folder: Path) -> None:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.Execute()


def _single_stream_gzip(volume: sitk.Image, path: Path) -> None:
    """The voxels through one GzipFile stream at the writer's level (the previous writer's way)."""
    with open(path, "wb") as handle, gzip.GzipFile(fileobj=handle, mode="wb", mtime=0, filename="",
                                                   compresslevel=GZIP_LEVEL) as stream:
        for plane in sitk.GetArrayViewFromImage(volume):
            stream.write(plane.tobytes())


def _dcmwrite_bytes(encoder: SeriesEncoder, parts) -> bytes:
    """One instance through pydicom.dcmwrite of its full dataset (the baseline writer)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, encoder.dataset(parts), enforce_file_format=True)
    return buffer.getvalue()


def _dicom_write_ms(volume, out_dir: Path, repeat: int) -> tuple[float, float]:
    """Median CPU ms per slice of write_fused_series: (medfuse, dcmwrite baseline); checks identical bytes."""
    fused = np.clip((sitk.GetArrayViewFromImage(volume.image).astype(np.float32) + 1000) / 2000, 0, 1)
    n_slices = len(fused)
    cited = [[(0, z)] for z in range(n_slices)]

    def write(name: str) -> float:
        start = time.process_time()
        write_fused_series(fused, volume.image, [volume.references], out_dir / name, uid_entropy="io-bench",
                           content_datetime=datetime(2026, 1, 2, 3, 4, 5), slice_sources=cited)
        return (time.process_time() - start) / n_slices * 1000

    ours, baseline = [], []
    for run in range(repeat):
        ours.append(write(f"medfuse{run}"))
        with mock.patch.object(SeriesEncoder, "file_bytes", _dcmwrite_bytes):
            baseline.append(write(f"dcmwrite{run}"))
    for left, right in zip(sorted((out_dir / "medfuse0").iterdir()), sorted((out_dir / "dcmwrite0").iterdir())):
        assert left.read_bytes() == right.read_bytes(), left.name
    return statistics.median(ours), statistics.median(baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", help="shared data root (default ../shared/data)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dicom-write-only", action="store_true", help="run only the DICOM series writer section")
    args = parser.parse_args()
    pet_ct = _shared_root(args.shared) / "volumes" / "tcia_CCTH-A01_pet_ct"
    with tempfile.TemporaryDirectory(prefix="medfuse-io-bench-") as tmp:
        tmp = Path(tmp)
        ct = _templates(pet_ct / "CT_images", "CT")
        _write_stack(ct, tmp / "read", READ_SLICES, 2.5, 3)
        (series,) = scan_folder(tmp / "read").series
        volume = read_series(series)
        assert volume.image.GetSize() == (512, 512, READ_SLICES)
        if not args.dicom_write_only:
            pet = _templates(pet_ct / "PET_images", "PT")
            per_series = INDEX_FILES // 4
            for s in range(4):
                _write_stack(pet, tmp / "index" / f"s{s}", per_series, 3.27, 100 + s)

            index = scan_folder(tmp / "index")
            assert len(index.series) == 4 and all(s.usable for s in index.series), index.series
            ours_index = _best(lambda: scan_folder(tmp / "index"), args.repeat)
            gdcm_index = _best(lambda: _gdcm_scan(tmp / "index"), args.repeat)
            full_index = _best(lambda: _pydicom_full(tmp / "index"), args.repeat)

            ours_read = _best(lambda: read_series(scan_folder(tmp / "read").series[0]), args.repeat)
            ours_read_only = _best(lambda: read_series(series), args.repeat)
            sitk_read = _best(lambda: _sitk_read(tmp / "read"), args.repeat)

            nifti = tmp / "volume.nii.gz"
            write = {threads: _best(lambda threads=threads: write_nifti(volume, tmp / f"t{threads}.nii.gz",
                                                                        threads=threads),
                                    args.repeat) for threads in (1, 2)}
            assert (tmp / "t1.nii.gz").read_bytes() == (tmp / "t2.nii.gz").read_bytes()
            (tmp / "t2.nii.gz").rename(nifti)
            single_stream = _best(lambda: _single_stream_gzip(volume.image, tmp / "single.gz"), args.repeat)
            nifti_read = _best(lambda: read_nifti(nifti), args.repeat)
            sizes = nifti.stat().st_size / 2**20, (tmp / "single.gz").stat().st_size / 2**20
        dicom_write = _dicom_write_ms(volume, tmp / "dicom-write", args.repeat)

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPUs, load average {load}; best of {args.repeat} (wall) unless stated")
    if not args.dicom_write_only:
        print(f"index {INDEX_FILES} files: medfuse {ours_index:.2f} s (target <= {INDEX_TARGET_S} s) | "
              f"GDCM scan {gdcm_index:.2f} s (ratio {ours_index / gdcm_index:.2f}) | "
              f"pydicom full reads {full_index:.2f} s (ratio {ours_index / full_index:.2f})")
        print(f"read 512x512x{READ_SLICES}: medfuse scan+read {ours_read:.2f} s, read only {ours_read_only:.2f} s "
              f"(target <= {READ_TARGET_S} s) | SimpleITK {sitk_read:.2f} s "
              f"(ratio scan+read {ours_read / sitk_read:.2f}, read only {ours_read_only / sitk_read:.2f})")
        print(f"write 512x512x{READ_SLICES} float32 .nii.gz (level {GZIP_LEVEL}): 1 thread {write[1]:.2f} s, "
              f"2 threads {write[2]:.2f} s ({sizes[0]:.1f} MiB) | one GzipFile stream {single_stream:.2f} s "
              f"({sizes[1]:.1f} MiB; ratio 2 threads {write[2] / single_stream:.2f}) | read_nifti {nifti_read:.2f} s")
    print(f"write 512x512x{READ_SLICES} derived DICOM series: medfuse {dicom_write[0]:.2f} ms/slice CPU | "
          f"dcmwrite of each full dataset {dicom_write[1]:.2f} ms/slice (ratio {dicom_write[0] / dicom_write[1]:.2f}); "
          f"files byte-identical; median of {args.repeat}")


if __name__ == "__main__":
    main()
