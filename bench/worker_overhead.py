"""What running the fusion inside Dask workers costs per slice, against a plain process.

Run by hand (not part of the test suite)::

    python bench/worker_overhead.py [--slices 40] [--repeat 3]

Each case fuses the same synthetic pair of 512 x 512 sources (smooth patterns plus noise) slice by
slice with :func:`medfuse.volume.chunk_task.fuse_chunk` (one-slice chunks, as fuse-study uses for
512 x 512 pairs) and prints the seconds per slice, timed inside the process that fuses:

* ``main``: the main thread of this process;
* ``workers=N profiler=on|off``: N workers of a local ``dask.distributed`` cluster (one thread each,
  medfuse's worker settings from :func:`medfuse.volume.local_cluster.local_worker_config`, with dask's
  statistical profiler switched back on for ``on``), all fusing at the same time.

One worker against ``main`` is the cost of the worker itself; two workers against one is what two
processes sharing the machine cost each other (the ceiling of the fusion stage's speed-up).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def synthetic_pair(size: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(2, 1, size, size) float32 sources in [0, 1] and their (all true) coverage."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    a = 0.5 + 0.4 * np.sin(12 * x) * np.cos(9 * y) + rng.normal(0, 0.02, (size, size))
    b = 0.5 + 0.4 * np.cos(7 * x + 3 * y) + rng.normal(0, 0.02, (size, size))
    stack = np.clip(np.stack([a, b])[:, None], 0, 1).astype(np.float32)
    return stack, np.ones(stack.shape, bool)


def seconds_per_slice(slices: int) -> float:
    """Fuse *slices* one-slice chunks after one warm-up chunk; seconds per slice."""
    from medfuse.core.config import FusionConfig
    from medfuse.volume.chunk_task import fuse_chunk

    config = FusionConfig()
    stack, cover = synthetic_pair()
    histograms = np.ones((2, config.saliency_levels), np.int64)
    fuse_chunk(stack, cover, config, histograms)
    started = time.perf_counter()
    for _ in range(slices):
        fuse_chunk(stack, cover, config, histograms)
    return (time.perf_counter() - started) / slices


def on_workers(workers: int, profiler: bool, slices: int) -> list[float]:
    import dask
    from dask.distributed import Client, LocalCluster

    from medfuse.volume.local_cluster import local_worker_config

    settings = {**local_worker_config(), "distributed.worker.profile.enabled": profiler}
    with dask.config.set(settings):
        with LocalCluster(n_workers=workers, threads_per_worker=1, host="127.0.0.1",
                          dashboard_address="127.0.0.1:0", silence_logs=40) as cluster, Client(cluster) as client:
            client.wait_for_workers(workers)
            names = list(client.scheduler_info()["workers"])
            futures = [client.submit(seconds_per_slice, slices, pure=False, workers=[name]) for name in names]
            return client.gather(futures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=40, help="Slices fused per process (default 40).")
    parser.add_argument("--repeat", type=int, default=3, help="Runs of each case (default 3).")
    args = parser.parse_args()
    for run in range(1, args.repeat + 1):
        print(json.dumps({"run": run, "case": "main", "s_per_slice": round(seconds_per_slice(args.slices), 4)}),
              flush=True)
        for workers in (1, 2):
            for profiler in ((True, False) if run % 2 else (False, True)):  # alternate the order run by run
                per_worker = on_workers(workers, profiler, args.slices)
                print(json.dumps({"run": run, "case": f"workers={workers} profiler={'on' if profiler else 'off'}",
                                  "s_per_slice": [round(v, 4) for v in per_worker]}), flush=True)


if __name__ == "__main__":
    main()
