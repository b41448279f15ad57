"""Slice dispatch: same pixels on every executor, the slices-without-data rule, errors."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medfuse.core.config import FusionConfig
from medfuse.core.fusion import fuse_slices
from medfuse.errors import InputError
from medfuse.features.registry import load_extractor
from medfuse.volume.dispatch import fuse_volume, interslice_variation

SAMPLE = Path(__file__).resolve().parents[1] / "sample_studies" / "mr-phantom-two-contrasts"
SLICES = slice(24, 36)  # 12 slices through the middle of the phantom: fast, real structure


def _unit(folder: Path) -> tuple[np.ndarray, sitk.Image]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    return np.clip(array / np.percentile(array, 99.5), 0, 1), image


@pytest.fixture(scope="module")
def pair():
    """The sample's T1 and its synthetic contrast resampled onto the T1 grid (no registration needed here)."""
    t1, t1_image = _unit(SAMPLE / "series1_t1")
    _, synthetic_image = _unit(SAMPLE / "series2_synthetic_contrast")
    resampled = sitk.Resample(synthetic_image, t1_image, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    synthetic = sitk.GetArrayFromImage(resampled)
    synthetic = np.clip(synthetic / np.percentile(synthetic, 99.5), 0, 1).astype(np.float32)
    return np.ascontiguousarray(t1[SLICES]), np.ascontiguousarray(synthetic[SLICES])


@pytest.fixture(scope="module")
def in_process(pair):
    return fuse_volume(list(pair), None, workers=1, chunk_slices=4)


def test_in_process_equals_the_core_on_the_whole_stack(pair, in_process):
    """Chunking changes nothing: per-slice saliency, one core call over all slices gives the same pixels."""
    config = FusionConfig()
    direct = fuse_slices(np.stack(pair), config, load_extractor(threads=1))
    chunked = fuse_volume(list(pair), None, config, workers=1, chunk_slices=4, saliency_scope="slice")
    np.testing.assert_array_equal(chunked, direct)
    assert in_process.shape == pair[0].shape and in_process.dtype == np.float32


@pytest.mark.slow
def test_one_and_two_local_workers_give_identical_pixels(pair, in_process, tmp_path):
    """Two local workers (memory-mapped path, with a coverage mask) equal in-process, and leave no files."""
    t1 = pair[0]
    cover = np.ones(t1.shape, bool)
    cover[:3] = False
    cover[3:, :, :50] = False
    masks = [None, cover]
    expected = fuse_volume(list(pair), masks, workers=1, chunk_slices=4)
    seen = []
    two = fuse_volume(list(pair), masks, workers=2, chunk_slices=1, progress=lambda n, total: seen.append(n),
                      scratch_dir=tmp_path)
    np.testing.assert_array_equal(two, expected)
    assert sum(seen) == len(t1)
    assert list(tmp_path.iterdir()) == []  # the memory-mapped files are removed
    assert not np.array_equal(expected, in_process)  # the mask mattered


def test_block_task_on_staged_files_equals_the_chunk_task(pair, tmp_path):
    """The local workers' task (files in, file out) writes exactly what the in-graph chunk task returns."""
    from medfuse.volume.chunk_task import fuse_chunk
    from medfuse.volume.dispatch import fuse_block
    from medfuse.volume.staging import StagedVolumes

    t1, synthetic = pair
    cover = synthetic > 0.05
    config = FusionConfig()
    staged = StagedVolumes.create(tmp_path, 2, t1.shape)
    for k, (values, covered) in enumerate(((t1, np.ones_like(cover)), (synthetic, cover))):
        staged.write_source(k, 0, values)
        staged.write_cover(k, 0, covered)
    assert fuse_block(str(tmp_path), [(2, 5), (5, 6)], config, None) == 4
    written = np.load(tmp_path / "fused.npy")  # a plain .npy file
    stack, both = np.stack([t1, synthetic])[:, 2:5], np.stack([np.ones_like(cover), cover])[:, 2:5]
    np.testing.assert_array_equal(written[2:5], fuse_chunk(stack, both, config, None))
    assert not written[:2].any() and not written[6:].any()  # only the given slices are written


def test_fuse_staged_equals_fuse_volume_and_leaves_the_inputs(pair, tmp_path):
    """fuse-study's path (staged files, in-process) gives fuse_volume's pixels on the same arrays."""
    from medfuse.volume.dispatch import fuse_staged
    from medfuse.volume.staging import StagedVolumes

    t1, synthetic = pair
    cover = synthetic > 0.05
    staged = StagedVolumes.create(tmp_path, 2, t1.shape)
    for k, (values, covered) in enumerate(((t1, np.ones_like(cover)), (synthetic, cover))):
        staged.write_source(k, 0, values)
        staged.write_cover(k, 0, covered)
    seen = []
    fuse_staged(staged, workers=1, chunk_slices=4, progress=lambda n, total: seen.append((n, total)))
    expected = fuse_volume([t1, synthetic], [None, cover], workers=1, chunk_slices=4)
    np.testing.assert_array_equal(staged.fused(), expected)
    np.testing.assert_array_equal(StagedVolumes.open(tmp_path).read(0, len(t1))[0], np.stack([t1, synthetic]))
    assert seen == [(4, 12), (4, 12), (4, 12)]


def test_a_full_disk_in_a_worker_is_reported_as_a_write_error(pair, tmp_path, monkeypatch):
    """A failure inside a worker task keeps its kind: a full disk while writing the output file is a
    WriteError (exit 6) naming the slices and the reason, not a generic fusion failure. (Workers in threads
    of this process, so that the disk can be made to fill up here.)"""
    import errno

    from dask.distributed import Client, LocalCluster

    from medfuse.errors import WriteError
    from medfuse.volume.chunk_task import chunk_bounds
    from medfuse.volume.dispatch import _run_blocks
    from medfuse.volume.staging import StagedVolumes

    t1, synthetic = pair
    staged = StagedVolumes.create(tmp_path, 2, t1.shape)
    for k, values in enumerate((t1, synthetic)):
        staged.write_source(k, 0, values)
        staged.write_cover(k, 0, np.ones(values.shape, bool))

    def full_disk(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("medfuse.volume.staging.os.pwrite", full_disk)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with pytest.raises(WriteError, match=r"fusion of slices \d+-\d+ failed: could not write the temporary "
                                             r"fusion file .*fused.npy: No space left on device"):
            _run_blocks(client, staged, chunk_bounds(staged.shape, 4), FusionConfig(), None, 1, None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def external_scheduler(tmp_path_factory):
    """A real ``dask scheduler`` and one ``dask worker`` (1 thread) as subprocesses on 127.0.0.1; its address."""
    logs_dir = tmp_path_factory.mktemp("dask")
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    logs = [open(logs_dir / name, "w") for name in ("scheduler.log", "worker.log")]
    scheduler = subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                                 stdout=logs[0], stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
                               "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"],
                              stdout=logs[1], stderr=subprocess.STDOUT)
    try:
        _wait_for_worker(address)
        yield address
    finally:
        for process in (worker, scheduler):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        for log in logs:
            log.close()


@pytest.mark.slow
def test_external_scheduler_and_worker_processes(pair, in_process, external_scheduler):
    remote = fuse_volume(list(pair), None, scheduler=external_scheduler, chunk_slices=4)
    np.testing.assert_array_equal(remote, in_process)


@pytest.mark.slow
def test_fuse_study_through_an_external_scheduler(external_scheduler, tmp_path):
    """``medfuse fuse-study --scheduler``: the staged path sends chunks with their pixels; same pixels as in-process."""
    from medfuse.cli.app import main
    from medfuse.study.pipeline import StudyOptions, fuse_study

    assert main(["fuse-study", str(SAMPLE), "-o", str(tmp_path / "remote"), "--scheduler", external_scheduler,
                 "--format", "nifti", "--quiet"]) == 0
    local = fuse_study(SAMPLE, tmp_path / "local", StudyOptions(workers=1, formats=("nifti",)))
    remote = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "remote" / "fused.nii.gz")))
    np.testing.assert_array_equal(remote, sitk.GetArrayFromImage(sitk.ReadImage(str(local.nifti_path))))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["local", "remote"]  # no scratch folder left


def _wait_for_worker(address: str, timeout: float = 60.0) -> None:
    from dask.distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout="30s") as client:
        while not client.scheduler_info()["workers"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no dask worker joined {address} within {timeout} s")
            time.sleep(0.5)


def test_uncovered_slices_take_the_source_that_has_data(pair, in_process):
    t1, synthetic = pair
    cover = np.ones(t1.shape, bool)
    cover[:4] = False  # first 4 slices: outside the second source's field of view
    cover[4:, :, :64] = False  # the rest: only the right half covered
    fused = fuse_volume([t1, synthetic], [None, cover], workers=1, chunk_slices=4)
    np.testing.assert_array_equal(fused[:4], t1[:4])
    np.testing.assert_array_equal(fused[4:, :, :64], t1[4:, :, :64])
    assert not np.array_equal(fused[4:, :, 64:], t1[4:, :, 64:])


def test_empty_air_slices_are_not_fused_as_tissue(pair):
    t1, synthetic = pair
    air = t1.copy()
    air[:2] = 0.0  # the first source is air in two slices
    fused = fuse_volume([air, synthetic], None, workers=1, chunk_slices=4)
    np.testing.assert_array_equal(fused[:2], synthetic[:2])
    neither = fuse_volume([air, np.where(np.arange(len(air))[:, None, None] < 2, 0.0, synthetic).astype(np.float32)],
                          None, workers=1, chunk_slices=4)
    assert not neither[:2].any()


def test_volume_saliency_scope_differs_from_per_slice(pair, in_process):
    # Saliency (and so its scope) belongs to the two-scale rule; the default pyramid rule has none.
    two_scale = FusionConfig.photo()
    per_slice = fuse_volume(list(pair), None, two_scale, workers=1, chunk_slices=4, saliency_scope="slice")
    per_volume = fuse_volume(list(pair), None, two_scale, workers=1, chunk_slices=4, saliency_scope="volume")
    assert not np.array_equal(per_slice, per_volume)
    pyramid_per_slice = fuse_volume(list(pair), None, workers=1, chunk_slices=4, saliency_scope="slice")
    np.testing.assert_array_equal(pyramid_per_slice, in_process)
    for fused in (per_slice, per_volume, in_process):
        ratio = interslice_variation(fused) / np.mean([interslice_variation(s) for s in pair])
        assert 0.2 < ratio < 5.0  # a sane fused volume varies between slices like its sources


@pytest.mark.parametrize(
    ("arrays", "kw", "message"),
    [
        (1, {}, "at least two"),
        (2, {"saliency_scope": "stack"}, "saliency scope"),
        (2, {"workers": 0}, "workers"),
    ],
)
def test_bad_input_raises(pair, arrays, kw, message):
    with pytest.raises(InputError, match=message):
        fuse_volume(list(pair)[:arrays], None, **kw)


def test_mismatched_shapes_raise(pair):
    with pytest.raises(InputError, match="share one"):
        fuse_volume([pair[0], pair[1][:, :10]], None)


def test_volume_histograms_by_slabs_equal_the_whole_volume_histogram(pair):
    from medfuse.core.saliency import level_histogram
    from medfuse.volume.dispatch import volume_histograms

    t1, synthetic = pair
    cover = synthetic > 0.05  # an irregular mask, as a coverage mask can be
    config = FusionConfig()
    # 8-slice slabs over 12 slices: the last slab is partial.
    slabbed = volume_histograms([t1, synthetic], [None, cover], config.saliency_levels)
    whole = np.stack([level_histogram(t1, config.saliency_levels),
                      level_histogram(synthetic[cover], config.saliency_levels)])
    np.testing.assert_array_equal(slabbed, whole)
    assert slabbed[1].sum() == cover.sum()


def _worker_settings():
    import os

    import dask

    return (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"),
            dask.config.get("distributed.worker.profile.enabled"))


@pytest.mark.slow
def test_local_workers_start_with_medfuse_settings_and_restore_the_callers():
    """The worker process gets glibc's dynamic mmap threshold (no trim variable), one-thread libraries and no
    statistical profiler; the calling process's dask settings are back as they were once the workers are up;
    the cluster listens on loopback only."""
    import dask

    from medfuse.volume.local_cluster import LocalWorkers

    before = (dask.config.get("distributed.nanny.pre-spawn-environ"),
              dask.config.get("distributed.worker.profile.enabled"))
    with LocalWorkers(1) as pool:
        client = pool.client()
        (settings,) = client.run(_worker_settings).values()
        addresses = [client.scheduler.address, *client.scheduler_info()["workers"]]
        dashboard = client.dashboard_link
        after = (dask.config.get("distributed.nanny.pre-spawn-environ"),
                 dask.config.get("distributed.worker.profile.enabled"))
    assert settings == (None, "1", False)
    assert after == before
    # Everything listens on loopback only, the HTTP server on a free port rather than dask's usual 8787.
    assert all(address.startswith("tcp://127.0.0.1:") for address in addresses), addresses
    assert dashboard.startswith("http://127.0.0.1:") and ":8787/" not in dashboard

