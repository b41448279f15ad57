"""Fuse co-registered volumes slice by slice, in chunks, on Dask.

**Slice axis.** The arrays are (Z, Y, X) as :func:`SimpleITK.GetArrayFromImage`
returns them on the fixed volume's grid; Z is the fixed volume's third image
axis, which for a DICOM series is the stacking (acquisition) direction. Slice z
of the output fuses slice z of every source with the core's
:func:`medfuse.core.fusion.fuse_slices`.

**Chunks.** Consecutive slices are grouped into chunks of ``chunk_slices``;
each chunk is one task and goes through the CNN in one batch. The default
holds about :data:`~medfuse.volume.chunk_task.CHUNK_PIXELS` source pixels per chunk (K x slices x Y x X,
at least one slice, at most :data:`~medfuse.volume.chunk_task.MAX_CHUNK_SLICES`): fusing a chunk needs
a few hundred bytes of working memory per source pixel (measured: +1.6 GB for
8 slices of two 512 x 512 sources; a 2-slice chunk's peak is about 190 MB above
a 1-slice chunk's), while the time per slice
does not depend on the chunk size. It depends only on the shapes, never on
the worker count, so the CNN sees the same batches whatever runs it.
How chunks reach the workers depends on where they run (below); either way
memory stays at the inputs, the output and a few chunks.

**Where to run.** ``workers=1`` (and ``scheduler=None``) runs in this process.
Otherwise a local ``dask.distributed`` cluster is started with ``workers``
worker processes of one thread each, and onnxruntime uses one thread per
worker (no oversubscription). Default (``workers=None``): one worker per
available core, except for small jobs (fewer than
:data:`LOCAL_CLUSTER_MIN_VOXELS` source voxels in all), which run in-process
because starting worker processes (each importing onnxruntime and loading the
model) costs more than it saves there (5-15 s measured on a shared 2-core
machine, against about 3 s for the whole sample study's fusion).
**Local workers read and write files.** fuse-study stages the sources and
coverage masks on the fixed grid in ``.npy`` files of a scratch folder
(:mod:`medfuse.volume.staging`) and calls :func:`fuse_staged`; for in-memory
arrays, :func:`fuse_volume` with a local cluster first writes them to such a
folder (in ``scratch_dir``, else the system temporary folder) while the
workers start. Each task gets only the folder and a block of consecutive
slices (:data:`BLOCKS_PER_WORKER` blocks per worker), reads its chunks from
the files, fuses them and writes the result into the folder's output file,
so the main process, which also hosts the scheduler, neither sends nor
receives pixels. Sending every chunk through the graph from the main process
cost a third of the second core on a 2-core machine (docs/fuse-study.md).
:func:`fuse_volume` removes its folder afterwards, also on failure.

``scheduler="tcp://host:port"`` sends tasks to an existing dask.distributed
scheduler instead, with the chunks' pixels in the graph (the workers may be on
other machines, where the temporary files do not exist): at most
:data:`IN_FLIGHT_PER_WORKER` chunks per worker are in flight, and every
finished chunk is copied straight into the output (array or staged file). Every path gives
identical pixels: each chunk is fused by the same pure function
(:func:`fuse_chunk`) with the same chunk bounds, and onnxruntime always runs
with one thread.

**Slices without data** (the documented rule). Source k *covers* a voxel where
its mask is set (``masks[k] is None`` means everywhere). In each slice, source
k takes part only if it covers at least one voxel there and the slice is not
empty air, i.e. its covered voxels' 99.5th percentile reaches
:data:`~medfuse.volume.chunk_task.EMPTY_SLICE_LEVEL`. Then:

* two or more sources take part: they are fused; afterwards every voxel covered
  by exactly one taking-part source takes that source's value, and voxels
  covered by none are 0 -- black outside a field of view is never fused in as
  if it were tissue;
* one source takes part: the slice is that source's slice (0 where uncovered);
* none: the slice is 0.

**Saliency scope.** ``"volume"`` (default) builds one grey-level histogram per
source over all its covered voxels of the whole volume and passes it to the
core as ``saliency_histograms``, so every slice is weighted with the same
saliency table; ``"slice"`` lets each slice use its own histogram (the paper's
per-image saliency). The default comes from a measurement of inter-slice
consistency, see ``docs/fuse-study.md`` and :func:`interslice_variation`.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medfuse.core.config import FusionConfig
from medfuse.core.saliency import level_histogram
from medfuse.errors import FusionError, InputError, MedfuseError, one_line
from medfuse.volume.chunk_task import WeightPlanes, chunk_bounds, fuse_chunk
from medfuse.volume.local_cluster import LocalWorkers
from medfuse.volume.staging import StagedVolumes

__all__ = ["SALIENCY_SCOPES", "default_workers", "fuse_staged", "fuse_volume", "interslice_variation",
           "local_workers_for", "volume_histograms"]

SALIENCY_SCOPES = ("volume", "slice")
#: Below this many source voxels (K x Z x Y x X) the default runs in-process.
LOCAL_CLUSTER_MIN_VOXELS = 20_000_000
#: Chunks submitted ahead per worker to an external scheduler (keeps workers busy while the next chunk is sent).
IN_FLIGHT_PER_WORKER = 2
#: Blocks of slices per local worker (staged-files path): few tasks, yet work left to balance at the end.
BLOCKS_PER_WORKER = 4


def default_workers() -> int:
    """One worker per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def fuse_volume(
    arrays: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None] | None,
    config: FusionConfig | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    saliency_scope: str = "volume",
    chunk_slices: int | None = None,
    progress=None,
    scratch_dir: str | os.PathLike | None = None,
    local_workers: LocalWorkers | None = None,
    planes: WeightPlanes | None = None,
) -> np.ndarray:
    """Fuse K co-registered volumes slice by slice.

    Parameters
    ----------
    arrays : sequence of K ndarrays, each (Z, Y, X) float32 in [0, 1]
        The sources on the fixed grid, K >= 2.
    masks : sequence of K (ndarray (Z, Y, X) bool/uint8 or None), or None
        Where each source has data (e.g. the moving volume's coverage mask
        after resampling). None: everywhere.
    config : FusionConfig, optional
        Fusion parameters (default ``FusionConfig()``); the extractor named by
        ``config.model``/``config.depth`` is loaded in each worker.
    workers : int, optional
        Local worker processes (default: one per core, in-process for small
        jobs; see module doc). 1 runs in-process.
    scheduler : str, optional
        Address of an existing dask.distributed scheduler (``tcp://host:port``).
    saliency_scope : {'volume', 'slice'}
    chunk_slices : int, optional
        Slices per task (default: see module doc).
    progress : callable, optional
        Called as ``progress(done_slices, total_slices)`` after each chunk
        (after each block of slices on a local cluster).
    scratch_dir : path, optional
        Where a local cluster's temporary files go (a staging folder that is
        created and removed inside it, :mod:`medfuse.volume.staging`; default:
        the system temporary folder, also when *scratch_dir* does not exist).
        Needs about the size of the sources, masks and output on disk. The
        result is then a copy-on-write memory map of the output file.
    local_workers : LocalWorkers, optional
        Already started local workers (see :func:`fuse_staged`); not closed.
    planes : WeightPlanes, optional
        Filled with the weights used on the three mid planes (for the QC
        report); on a local cluster it must keep them in a folder.

    Returns
    -------
    ndarray, shape (Z, Y, X), float32 in [0, 1]

    Raises
    ------
    InputError
        Fewer than two sources, shapes that differ, bad options.
    FusionError
        A task failed, or the scheduler could not be reached.
    """
    config = config or FusionConfig()
    arrays = [np.asarray(a) for a in arrays]
    masks = list(masks) if masks is not None else [None] * len(arrays)
    _check_inputs(arrays, masks)
    _check_options(saliency_scope, workers, chunk_slices)
    z = arrays[0].shape[0]
    shape = (len(arrays), *arrays[0].shape)
    workers = _resolve_workers(workers, scheduler, shape)
    if scheduler is None and (workers > 1 or local_workers is not None):
        return _fuse_arrays_on_local_cluster(arrays, masks, config, workers, saliency_scope, chunk_slices, progress,
                                             scratch_dir, local_workers, planes)

    def chunk_args(start: int, stop: int):
        return _array_chunk(arrays, masks, start, stop)

    # Volume-wide saliency histograms serve the two-scale rule only (the pyramid rule has no saliency).
    wants_histograms = saliency_scope == "volume" and config.rule == "two-scale"
    histograms = volume_histograms(arrays, masks, config.saliency_levels) if wants_histograms else None
    bounds = chunk_bounds(shape, chunk_slices)
    fused = np.zeros(arrays[0].shape, np.float32)

    def store(start: int, stop: int, result) -> None:
        if planes is not None:
            result, cuts = result
            planes.store(start, cuts)
        fused[start:stop] = result
        if progress is not None:
            progress(stop - start, z)

    cuts_for = (lambda start: (start, z)) if planes is not None else (lambda start: None)
    if scheduler is None:
        for start, stop in bounds:
            store(start, stop, fuse_chunk(*chunk_args(start, stop), config, histograms, cuts_for(start)))
    else:
        _run_distributed(bounds, chunk_args, store, config, histograms, workers, scheduler, cuts_for)
    return fused


def fuse_staged(
    staged: StagedVolumes,
    config: FusionConfig | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    saliency_scope: str = "volume",
    chunk_slices: int | None = None,
    progress=None,
    local_workers: LocalWorkers | None = None,
    planes: WeightPlanes | None = None,
) -> None:
    """Fuse staged sources into the staged output file (fuse-study's path).

    As :func:`fuse_volume`, but the sources, masks and output are the files
    of *staged* (:mod:`medfuse.volume.staging`): nothing of the volumes is
    held in this process's memory beyond a chunk, and local workers read and
    write the same files. Same pixels as :func:`fuse_volume` on the same
    arrays, whatever runs it.

    Parameters
    ----------
    staged : StagedVolumes
        Sources and coverage filled (e.g. by :func:`medfuse.volume.staging.stage_on_grid`);
        the result goes to its output (:meth:`StagedVolumes.fused`).
    config, workers, scheduler, saliency_scope, chunk_slices, progress
        As :func:`fuse_volume`.
    local_workers : LocalWorkers, optional
        Already started local workers to use (see :func:`local_workers_for`)
        instead of starting a cluster here; they are not closed.
    planes : WeightPlanes, optional
        Filled with the weights used on the three mid planes (for the QC
        report); local workers need it kept in a folder.

    Raises
    ------
    InputError
        Fewer than two sources, bad options.
    FusionError
        A task failed, or the scheduler could not be reached.
    """
    config = config or FusionConfig()
    if staged.k < 2:
        raise InputError(f"fusion needs at least two volumes, got {staged.k}")
    _check_options(saliency_scope, workers, chunk_slices)
    z = staged.zyx[0]
    workers = _resolve_workers(workers, scheduler, staged.shape)
    bounds = chunk_bounds(staged.shape, chunk_slices)
    pool = local_workers
    if pool is None and scheduler is None and workers > 1:
        pool = LocalWorkers(workers).start()  # closed below; starts while the histograms are counted
    try:
        histograms = (_counted_levels(_slabs(staged.read, z), staged.k, config.saliency_levels)
                      if saliency_scope == "volume" and config.rule == "two-scale" else None)

        def store(start: int, stop: int, result) -> None:
            if planes is not None:
                result, cuts = result
                planes.store(start, cuts)
            staged.write_fused(start, result)
            if progress is not None:
                progress(stop - start, z)

        cuts_for = (lambda start: (start, z)) if planes is not None else (lambda start: None)
        if scheduler is not None:
            _run_distributed(bounds, staged.read, store, config, histograms, workers, scheduler, cuts_for)
        elif pool is not None:
            _run_blocks(pool.client(), staged, bounds, config, histograms, pool.workers, progress, planes)
        else:
            for start, stop in bounds:
                store(start, stop, fuse_chunk(*staged.read(start, stop), config, histograms, cuts_for(start)))
    finally:
        if pool is not None and pool is not local_workers:
            pool.close()


def interslice_variation(volume: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean absolute difference between adjacent slices (along axis 0).

    Parameters
    ----------
    volume : ndarray (Z, Y, X)
    mask : ndarray (Z, Y, X) bool, optional
        Only voxel pairs where both slices are inside the mask count.

    Returns
    -------
    float
        A fused volume's value divided by its sources' mean value is the
        inter-slice consistency ratio reported in docs/fuse-study.md (about 1:
        the fused volume varies between slices as much as its sources; larger:
        it flickers).
    """
    diff = np.abs(np.diff(np.asarray(volume, np.float32), axis=0))
    if mask is None:
        return float(diff.mean())
    both = mask[1:] & mask[:-1]
    return float(diff[both].mean()) if both.any() else 0.0


def _array_chunk(arrays, masks, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Slices ``start:stop`` of in-memory volumes: (K, n, Y, X) float32 sources and bool coverage."""
    stack = np.stack([a[start:stop] for a in arrays]).astype(np.float32, copy=False)
    cover = np.stack([np.ones((stop - start,) + a.shape[1:], bool) if m is None
                      else np.asarray(m[start:stop]).astype(bool, copy=False) for m, a in zip(masks, arrays)])
    return stack, cover


def _slab_bounds(z: int, slab_slices: int = 8):
    """(start, stop) of consecutive slabs of at most *slab_slices* of *z* slices."""
    return ((start, min(start + slab_slices, z)) for start in range(0, z, slab_slices))


def _slabs(read, z: int, slab_slices: int = 8):
    """``read(start, stop)`` over the slabs of *z* slices (staged files or in-memory volumes)."""
    return (read(start, stop) for start, stop in _slab_bounds(z, slab_slices))


def volume_histograms(arrays, masks, levels: int) -> np.ndarray:
    """Volume-wide grey-level histograms of the covered voxels (the ``"volume"`` saliency scope).

    Parameters
    ----------
    arrays : K arrays (Z, Y, X) float in [0, 1] (memory maps are fine)
    masks : K arrays (Z, Y, X) bool or None (None: everywhere)
    levels : int
        ``FusionConfig.saliency_levels``.

    Returns
    -------
    ndarray (K, levels) int64
        What :func:`fuse_volume` passes to the core as ``saliency_histograms``.
    """
    z = np.shape(arrays[0])[0]
    return _counted_levels(_slabs(lambda start, stop: _array_chunk(arrays, masks, start, stop), z), len(arrays),
                           levels)


def _counted_levels(slabs, k: int, levels: int) -> np.ndarray:
    """(K, levels) counts of every source's covered voxels, summed over *slabs* of ``(stack, cover)``.

    Slab by slab so the quantised levels (int64) and the masked selection never
    exist for the whole volume at once (they would be 2-3x the volume's size).
    """
    counts = np.zeros((k, levels), np.int64)
    for stack, cover in slabs:
        for source in range(k):
            counts[source] += level_histogram(stack[source][cover[source]], levels)
    return counts


def _resolve_workers(workers: int | None, scheduler: str | None, shape: tuple[int, ...]) -> int:
    if workers is not None:
        return workers
    small = int(np.prod(shape)) < LOCAL_CLUSTER_MIN_VOXELS
    return 1 if small and scheduler is None else default_workers()


def _check_inputs(arrays, masks) -> None:
    if len(arrays) < 2:
        raise InputError(f"fusion needs at least two volumes, got {len(arrays)}")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 3:
        raise InputError(f"volumes must share one (Z, Y, X) shape on the fixed grid, got {sorted(shapes)}")
    if len(masks) != len(arrays):
        raise InputError(f"got {len(masks)} masks for {len(arrays)} volumes")
    for mask in masks:
        if mask is not None and np.shape(mask) != arrays[0].shape:
            raise InputError(f"mask shape {np.shape(mask)} differs from the volumes' {arrays[0].shape}")


def _check_options(saliency_scope, workers, chunk_slices) -> None:
    if saliency_scope not in SALIENCY_SCOPES:
        raise InputError(f"saliency scope must be one of {', '.join(SALIENCY_SCOPES)}, got {saliency_scope!r}")
    for name, value in (("workers", workers), ("chunk_slices", chunk_slices)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise InputError(f"{name} must be a positive integer, got {value!r}")


def local_workers_for(workers: int | None, scheduler: str | None, shape: tuple[int, ...]) -> LocalWorkers | None:
    """The local cluster :func:`fuse_staged` would start for (K, Z, Y, X) sources, not started; None in-process.

    For callers that start the workers early (``with local_workers_for(...) as pool``)
    so that their start-up overlaps other work, and hand them to :func:`fuse_staged`.
    """
    if scheduler is not None:
        return None
    workers = _resolve_workers(workers, scheduler, shape)
    return LocalWorkers(workers) if workers > 1 else None


def fuse_block(folder: str, chunks: Sequence[tuple[int, int]], config: FusionConfig,
               histograms: np.ndarray | None, planes_folder: str | None = None) -> int:
    """Fuse chunks of the staged sources in *folder* into its output file (a local worker's task).

    Parameters
    ----------
    folder : str
        A staging folder (:class:`medfuse.volume.staging.StagedVolumes`).
    chunks : sequence of (start, stop)
        Slice ranges, each fused with :func:`fuse_chunk` as one batch.
    config, histograms
        As for :func:`fuse_chunk`.
    planes_folder : str, optional
        A :class:`WeightPlanes` folder to write the chunks' mid-plane weights to.

    Returns
    -------
    int
        The number of slices written.
    """
    staged = StagedVolumes.open(folder)
    planes = WeightPlanes.open(planes_folder) if planes_folder is not None else None
    done = 0
    for start, stop in chunks:
        if planes is None:
            staged.write_fused(start, fuse_chunk(*staged.read(start, stop), config, histograms))
        else:
            fused, cuts = fuse_chunk(*staged.read(start, stop), config, histograms, (start, staged.zyx[0]))
            planes.store(start, cuts)
            staged.write_fused(start, fused)
        done += stop - start
    return done


def _fuse_arrays_on_local_cluster(arrays, masks, config, workers, saliency_scope, chunk_slices, progress,
                                  scratch_dir, local_workers, planes) -> np.ndarray:
    """Stage in-memory arrays in a temporary folder (while the workers start), fuse it there, map the result."""
    parent = scratch_dir if scratch_dir is not None and os.path.isdir(scratch_dir) else None
    folder = Path(tempfile.mkdtemp(prefix=".medfuse-fuse-", dir=parent))
    pool = local_workers
    try:
        if pool is None:
            pool = LocalWorkers(workers).start()
        staged = StagedVolumes.create(folder, len(arrays), arrays[0].shape)
        for start, stop in _slab_bounds(arrays[0].shape[0]):
            stack, cover = _array_chunk(arrays, masks, start, stop)
            for k in range(len(arrays)):
                staged.write_source(k, start, stack[k])
                staged.write_cover(k, start, cover[k])
        fuse_staged(staged, config, saliency_scope=saliency_scope, chunk_slices=chunk_slices, progress=progress,
                    local_workers=pool, planes=planes)
        # A copy-on-write mapping of the output file rather than a read into memory (saves a copy and
        # the time to make it); the mapping stays valid after the folder is removed below.
        return np.asarray(np.load(folder / "fused.npy", mmap_mode="c"))
    finally:
        if pool is not None and pool is not local_workers:
            pool.close()
        shutil.rmtree(folder, ignore_errors=True)


def _run_blocks(client, staged: StagedVolumes, bounds, config, histograms, workers, progress, planes=None) -> None:
    """Hand blocks of chunks of a staging folder to local workers (see module doc); wait for all."""
    from dask.distributed import as_completed

    per_block = -(-len(bounds) // (BLOCKS_PER_WORKER * workers))
    blocks = [bounds[i:i + per_block] for i in range(0, len(bounds), per_block)]
    if planes is not None and planes.folder is None:
        raise ValueError("weight planes filled by local workers must be kept in a folder")
    futures = client.map(fuse_block, [str(staged.folder)] * len(blocks), blocks, config=config,
                         histograms=histograms, planes_folder=None if planes is None else str(planes.folder),
                         pure=False)
    where = {future.key: block for future, block in zip(futures, blocks)}
    for future in as_completed(futures):
        block = where[future.key]
        try:
            done = future.result()
        except Exception as exc:  # a worker-side failure, reported with its reason (and kind, e.g. a full disk)
            error = type(exc) if isinstance(exc, MedfuseError) else FusionError
            raise error(f"fusion of slices {block[0][0]}-{block[-1][1] - 1} failed: {one_line(exc)}") from exc
        if progress is not None:
            progress(done, staged.zyx[0])


def _run_distributed(bounds, chunk_args, store, config, histograms, workers, scheduler, cuts_for=None) -> None:
    """Submit chunks with their pixels to an external dask.distributed scheduler, two per worker in flight."""
    from dask.distributed import Client, as_completed

    try:
        client = Client(scheduler, timeout="10s")
    except OSError as exc:
        raise FusionError(f"could not reach the Dask scheduler {scheduler}: {exc}") from exc
    try:
        in_flight = max(2, IN_FLIGHT_PER_WORKER * (len(client.scheduler_info().get("workers", {})) or workers or 1))
        pending = list(bounds)
        running = as_completed()
        where = {}

        def submit_next() -> None:
            start, stop = pending.pop(0)
            stack, cover = chunk_args(start, stop)
            stack_data, cover_data = client.scatter([stack, cover])  # one round trip for both
            future = client.submit(fuse_chunk, stack_data, cover_data, config, histograms,
                                   cuts_for(start) if cuts_for is not None else None, pure=False)
            where[future.key] = (start, stop)
            running.add(future)

        while pending and len(where) < in_flight:
            submit_next()
        for future in running:
            start, stop = where.pop(future.key)
            try:
                store(start, stop, future.result())
            except Exception as exc:  # a worker-side failure, reported with its reason
                raise FusionError(f"fusion of slices {start}-{stop - 1} failed: {one_line(exc)}") from exc
            future.release()
            if pending:
                submit_next()
    finally:
        client.close()
