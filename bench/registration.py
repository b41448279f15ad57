#!/usr/bin/env python3
"""Registration accuracy and speed on known transforms, against SimpleITK's textbook recipe.

    python bench/registration.py [--cases chris_t1,ct_pitch,...] [--threads 1] [--real-png-dir docs/img]

Every case registers a moving volume with a known rigid transform (rotations
up to 10 degrees, translations up to 20 mm) back onto the fixed volume and
measures the mean target registration error (TRE) over the fixed image's
foreground voxels (every 2nd voxel along each axis). Two kinds of case:

* synthetic second contrast: the fixed volume, its intensities inverted and
  squared with independent noise, moved by the known transform (either by
  changing the image geometry, "header", or by resampling the data,
  "resample": interpolation blur and a field-of-view cut);
* real second contrast of the same patient (T1c, T2 or FLAIR against T1):
  the two were not acquired co-registered, so the reference is the known
  transform composed with a reference registration of the unmoved pair
  (medfuse with dense sampling); the TRE then says how well a known motion
  of a real second contrast is recovered.

medfuse (default RegistrationConfig) runs against the textbook recipe of the
SimpleITK notebooks measured in the same run: geometry-centred Euler3D,
Mattes MI 50 bins, random sampling 5 %, gradient descent (learning rate 1.0,
100 iterations, convergence 1e-6 over 10), scales from physical shift,
shrink 4/2/1 with smoothing 2/1/0 mm, no masks. Times are wall seconds and
process CPU seconds (all threads), since this machine is shared; the ratio
column is medfuse / textbook wall time in the same run.

``--cases large`` adds bench/fuse_study.py's 512x512x200 CT with its synthetic MR (256x256x100, moved
by a known 3 degrees / 5 mm; built in a temporary folder); it is not in the default run, since its
textbook registration alone takes minutes.

With ``--real-png-dir`` it also registers the real same-subject pairs, runs the
alignment check on each (medfuse.volume.alignment_check)
(T1 <- T2, T1 <- FLAIR, CT <- PET) and writes their overlay PNGs there.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import SimpleITK as sitk
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medfuse.volume.alignment_check import check_alignment  # noqa: E402
from medfuse.volume.masks import foreground_mask  # noqa: E402
from medfuse.volume.model import Volume  # noqa: E402
from medfuse.volume.overlay import OverlayConfig, registration_overlay  # noqa: E402
from medfuse.volume.validation import inverted_contrast, moved_by, rigid_about_centre  # noqa: E402
from medfuse.volume.registration import RegistrationConfig, register  # noqa: E402
from medfuse.volume.resampling import resample_onto  # noqa: E402
from medfuse.volume.transforms import compose, mask_points_mm, target_registration_error  # noqa: E402

SHARED = Path(os.environ.get("MEDFUSE_SHARED_DATA", REPO.parent / "shared" / "data"))
DATA = SHARED / "volumes"
TCGA = DATA / "tcia_TCGA-FG-6692_t1_t1c_t2_flair"
T1 = TCGA / "T1_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_T1_AX_SE_10_se2d1_t1.nii.gz"
T1C = TCGA / "MRHR_T1_AX_POST_GAD_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T1_AX_POST_GAD_SE_13_se2d1r_t1c.nii.gz"
T2 = TCGA / "MRHR_T2_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_T2_AX_SE_2_tse2d1_11_t2.nii.gz"
FLAIR = TCGA / "MRHR_FLAIR_AX_OtherEXampleTCIA_TCGA-FG-6692_Si_TCGA-FG-6692_MRHR_FLAIR_AX_SE_IR_5_tir2d1_21_fla.nii.gz"
PET_CT = DATA / "tcia_CCTH-A01_pet_ct"
SAMPLE = REPO / "sample_studies" / "mr-phantom-two-contrasts"

# name: (fixed, moving or None for a synthetic contrast, how the motion is applied, rotation deg, translation mm);
# "given": the moving series already carries its documented motion (the bundled sample study).
CASES = {
    "sample_study": (SAMPLE / "series1_t1", SAMPLE / "series2_synthetic_contrast", "given", None, None),
    "ge_mprage": (SHARED / "dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22", None, "header",
                  (-5.0, 8.0, 10.0), (12.0, -8.0, 15.0)),
    "chris_t1": (DATA / "niivue_chris_t1/chris_t1.nii.gz", None, "header", (10.0, 5.0, -7.0), (-10.0, 15.0, 8.0)),
    "mr_gd": (DATA / "niivue_MR_Gd/MR_Gd.nii.gz", None, "resample", (-6.0, 9.0, 4.0), (15.0, 5.0, -12.0)),
    "ct_pitch": (DATA / "niivue_CT_pitch/CT_pitch.nii.gz", None, "resample", (5.0, -10.0, 8.0), (8.0, -12.0, 18.0)),
    "chris_pd": (DATA / "niivue_chris_t1/chris_t1.nii.gz", DATA / "niivue_chris_PD/chris_PD.nii.gz", "header",
                 (-8.0, 4.0, 6.0), (5.0, -18.0, 10.0)),
    "t1_t1c": (T1, T1C, "header", (8.0, -5.0, 10.0), (12.0, -15.0, 20.0)),
    "t1_t2": (T1, T2, "header", (-4.0, 7.0, -9.0), (-15.0, 10.0, 12.0)),
    "t1_flair": (T1, FLAIR, "header", (6.0, 6.0, 5.0), (10.0, 20.0, -10.0)),
}
# Not in the default run (its textbook registration alone takes minutes): bench/fuse_study.py's large pair,
# a 512x512x200 CT and a synthetic MR 256x256x100 moved by a known 3 degrees / 5 mm ("--cases large").
LARGE = "large"
REFERENCE_CONFIG = RegistrationConfig(sampling_percentages=(1.0, 0.5, 0.2), iterations=500, min_step=0.001)


def read(path: Path) -> sitk.Image:
    if path.is_dir():
        from medfuse.io.volumes import load_volume

        return load_volume(path).image
    return sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkFloat32)


def sample_study_truth() -> sitk.Transform:
    """The sample study's documented fixed -> moving transform (tools/make_sample_study.py, sample README)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_sample_study", REPO / "tools" / "make_sample_study.py")
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    source, _ = maker.read_source(SHARED / "dicom/ge_mr_t1_mprage/05_3D_Ax_T1_MP_RAGE_R22")
    return maker.rigid_offset_transform(source).GetInverse()


def textbook(fixed: sitk.Image, moving: sitk.Image, seed: int) -> sitk.Transform:
    """The SimpleITK notebooks' multi-modal recipe (60_Registration_Introduction)."""
    initial = sitk.CenteredTransformInitializer(
        fixed, moving, sitk.Euler3DTransform(), sitk.CenteredTransformInitializerFilter.GEOMETRY
    )
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(
        learningRate=1.0, numberOfIterations=100, convergenceMinimumValue=1e-6, convergenceWindowSize=10
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def timed(function, *args):
    wall, cpu = time.perf_counter(), time.process_time()
    value = function(*args)
    return value, time.perf_counter() - wall, time.process_time() - cpu


def large_pair() -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """bench/fuse_study.py's large CT and synthetic MR, and the known fixed -> moving transform."""
    import tempfile

    sys.path.insert(0, str(REPO / "bench"))
    from fuse_study import make_large_pair

    with tempfile.TemporaryDirectory() as folder:
        ct_path, mr_path = make_large_pair(Path(folder))
        fixed, moving = read(ct_path), read(mr_path)
    # make_large_pair resamples the CT through this offset (about the CT's centre): MR(x) = CT(offset(x)).
    offset = rigid_about_centre(fixed, (0.0, 0.0, 3.0), (5.0, -3.0, 0.0))
    return fixed, moving, offset.GetInverse()


def run_case(name: str, config: RegistrationConfig) -> dict:
    if name == LARGE:
        fixed, moving, reference = large_pair()
    else:
        fixed, moving, reference = case_volumes(name)
    points = mask_points_mm(foreground_mask(fixed), step=2)
    ours, wall, cpu = timed(register, Volume(fixed), Volume(moving), config)
    book, book_wall, book_cpu = timed(textbook, fixed, moving, config.seed)
    largest_voxel = max(fixed.GetSpacing())
    tre = target_registration_error(ours.transform, reference, points)
    book_tre = target_registration_error(book, reference, points)
    return {
        "case": name,
        "size": "x".join(map(str, fixed.GetSize())),
        "voxel": "x".join(f"{s:.2g}" for s in fixed.GetSpacing()),
        "tre": float(tre.mean()),
        "tre_max": float(tre.max()),
        "tre_voxels": float(tre.mean() / largest_voxel),
        "wall": wall,
        "cpu": cpu,
        "levels": " / ".join(f"{level.seconds:.1f}" for level in ours.levels),
        "init": ours.initialization,
        "book_tre": float(book_tre.mean()),
        "book_wall": book_wall,
        "book_cpu": book_cpu,
    }


def case_volumes(name: str) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """(fixed, moving, known fixed -> moving transform) of one of CASES."""
    fixed_path, moving_path, how, rotation, translation = CASES[name]
    fixed = read(fixed_path)
    if how == "given":
        moving, reference = read(moving_path), sample_study_truth()
    elif moving_path is None:
        known = rigid_about_centre(fixed, rotation, translation)
        moving, reference = moved_by(inverted_contrast(fixed), known, resample=how != "header"), known
    else:
        known = rigid_about_centre(fixed, rotation, translation)
        source = read(moving_path)
        unmoved = register(Volume(fixed), Volume(source), REFERENCE_CONFIG)
        moving, reference = moved_by(source, known, resample=how != "header"), compose(known, unmoved.transform)
    return fixed, moving, reference


def real_pairs(out_dir: Path, config: RegistrationConfig) -> list[dict]:
    from medfuse.io.volumes import load_volume

    out_dir.mkdir(parents=True, exist_ok=True)
    pairs = [
        ("t1-t2", T1, T2),
        ("t1-flair", T1, FLAIR),
        ("ct-pet", PET_CT / "CT_images", PET_CT / "PET_images"),
    ]
    rows = []
    for name, fixed_path, moving_path in pairs:
        fixed, moving = load_volume(fixed_path), load_volume(moving_path)
        result, wall, cpu = timed(register, fixed, moving, config)
        check, check_wall, _ = timed(check_alignment, fixed, moving, result.transform, result.initial)
        on_grid, coverage = resample_onto(fixed, moving, result.transform)
        # 1.5 mm display pixels keep the PNGs in docs/ small.
        picture = registration_overlay(fixed.image, on_grid.image, coverage, OverlayConfig(pixel_mm=1.5))
        Image.fromarray(picture).save(out_dir / f"registration-{name}.png", optimize=True)
        summary = result.summary
        rows.append({
            "pair": name, "init": result.initialization, "before": result.metric_before, "after": result.metric_after,
            "rotation": summary.rotation_angle_deg, "translation": summary.translation_norm_mm,
            "wall": wall, "cpu": cpu, "warnings": "; ".join(result.warnings) or "-",
            "check": f"{check.agreement:.3f} / {check.peak:+.3f} / {check.mirrored - check.agreement:+.3f} / "
                     f"{check.overlap:.2f} ({check_wall:.1f} s)", "doubts": "; ".join(check.warnings) or "-",
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated case names ({LARGE!r} too)")
    parser.add_argument("--threads", type=int, default=1, help="RegistrationConfig.threads (0 = all cores)")
    parser.add_argument("--real-png-dir", type=Path, help="also register the real pairs, overlays written here")
    args = parser.parse_args(argv)
    config = RegistrationConfig(threads=args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("| case | fixed size | voxel mm | medfuse TRE mean (max) mm | TRE / largest voxel | init | medfuse wall s (CPU s) "
          "| per level s | textbook TRE mm | textbook wall s (CPU s) | wall ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.cases.split(","):
        row = run_case(name.strip(), config)
        print(
            f"| {row['case']} | {row['size']} | {row['voxel']} | {row['tre']:.3f} ({row['tre_max']:.2f}) "
            f"| {row['tre_voxels']:.3f} | {row['init']} | {row['wall']:.1f} ({row['cpu']:.1f}) | {row['levels']} "
            f"| {row['book_tre']:.3f} | {row['book_wall']:.1f} ({row['book_cpu']:.1f}) "
            f"| {row['wall'] / row['book_wall']:.2f} |",
            flush=True,
        )
    if args.real_png_dir:
        print("\n| pair | init | MI before | MI after | rotation deg | translation mm | wall s (CPU s) | warnings "
              "| check: agreement / peak / mirrored - agreement / overlap (wall) | doubts |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for row in real_pairs(args.real_png_dir, config):
            print(
                f"| {row['pair']} | {row['init']} | {row['before']:.4f} | {row['after']:.4f} | {row['rotation']:.2f} "
                f"| {row['translation']:.2f} | {row['wall']:.1f} ({row['cpu']:.1f}) | {row['warnings']} "
                f"| {row['check']} | {row['doubts']} |",
                flush=True,
            )
    print(f"load average at end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
