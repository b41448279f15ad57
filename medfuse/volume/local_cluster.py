"""Local Dask clusters of one-thread worker processes, the way medfuse starts them.

Split from :mod:`medfuse.volume.dispatch`, which decides when to use one:
the settings the workers start with (:func:`local_worker_config`, also for
benchmarks' clusters), the guard against scripts that run medfuse while a
worker re-imports them (:func:`refuse_in_starting_worker`), and the cluster
that starts in the background while the caller stages its inputs
(:class:`LocalWorkers`).
"""

from __future__ import annotations

import time

from medfuse.errors import FusionError

__all__ = ["BOOTSTRAP_HINT", "LocalWorkers", "WORKER_START_TIMEOUT_S", "local_worker_config",
           "refuse_in_starting_worker"]

#: Seconds to wait for local worker processes to start.
WORKER_START_TIMEOUT_S = 120


def local_worker_config() -> dict:
    """The dask settings medfuse's local workers start with (also for benchmarks' clusters).

    Two of dask's defaults slow the fusion down and are changed:

    * ``MALLOC_TRIM_THRESHOLD_`` is left out of the workers' environment.
      Setting it turns off glibc's dynamic mmap threshold, so every large
      temporary of the fusion is mmapped and page-faulted afresh: one slice of
      two 512 x 512 sources took 0.18 s instead of 0.13 s in one process
      (64 slices, 11.6 s vs 8.1 s on the shared 2-core machine). The
      one-thread-per-library variables (OMP_NUM_THREADS...) are kept.
    * The workers' statistical profiler is off: it wakes every 10 ms, takes
      the GIL and walks the task's stack, and nobody looks at its profiles
      (there is no dashboard user). Its cost was not measurable above the
      host's noise (``bench/worker_overhead.py``, docs/fuse-study.md).
    """
    import dask

    environ = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
    return {"distributed.nanny.pre-spawn-environ":
            {key: value for key, value in environ.items() if key != "MALLOC_TRIM_THRESHOLD_"},
            "distributed.worker.profile.enabled": False}


#: What a Python script that starts local workers needs (worker processes are spawned and re-import the script).
BOOTSTRAP_HINT = "a Python script that runs medfuse must call it under `if __name__ == \"__main__\":`"


def refuse_in_starting_worker() -> None:
    """Refuse to run while this process is a worker process being started.

    Dask spawns local worker processes, and each re-imports the main script;
    a script that calls medfuse at import time would start a whole job (and
    more workers) in every worker. This stops that job at once, so the worker
    fails, the caller is told why (:meth:`LocalWorkers.client`), and nothing
    runs twice.

    Raises
    ------
    FusionError
        While a spawned process is importing its parent's main module.
    """
    import multiprocessing

    if getattr(multiprocessing.current_process(), "_inheriting", False):
        raise FusionError(f"medfuse was called while a worker process was starting: {BOOTSTRAP_HINT}")


class LocalWorkers:
    """A local dask.distributed cluster of one-thread worker processes, started in the background.

    ``start()`` returns at once while the worker processes import onnxruntime
    and the rest (about a second each), so a caller can stage its inputs
    meanwhile; :meth:`client` then waits for them. Use as a context manager
    (closed on exit, also on failure: no worker process is left behind).

    Parameters
    ----------
    workers : int
        Worker processes, each with one thread (and onnxruntime with one).
    """

    def __init__(self, workers: int):
        self.workers = workers
        self._cluster = self._client = self._settings = None

    def start(self) -> "LocalWorkers":
        import dask
        from dask.distributed import Client, LocalCluster

        refuse_in_starting_worker()

        # The nannies read these settings when they are created, in the background after scale(): they
        # stay set until every worker has started (client() or close() restores the previous values).
        self._settings = dask.config.set(local_worker_config())
        try:
            # The scheduler's HTTP server always runs (dashboard_address=None does not stop it, dask/distributed
            # issue 8136): on a free loopback port, not on 8787 where another service or cluster may listen.
            self._cluster = LocalCluster(n_workers=0, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         dashboard_address="127.0.0.1:0", silence_logs=40)
            self._client = Client(self._cluster)
            self._cluster.scale(self.workers)  # returns at once; the workers start in the background
        except BaseException as exc:
            self.close()
            if isinstance(exc, OSError):
                raise FusionError(f"could not start {self.workers} local Dask workers: {exc}") from exc
            raise
        return self

    def client(self):
        """The cluster's client, once every worker has started.

        Raises :class:`FusionError` as soon as a worker process fails at
        start-up (not after the whole start-up timeout).
        """
        from distributed.core import Status

        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while True:
            try:
                self._client.wait_for_workers(self.workers, timeout=1)
                break
            except OSError as exc:  # includes TimeoutError
                failed = any(nanny.status == Status.failed for nanny in self._cluster.workers.values())
                if failed or time.monotonic() > deadline:
                    self.close()
                    reason = (f"their processes failed at start-up ({BOOTSTRAP_HINT}; the log above says more)"
                              if failed else str(exc))
                    raise FusionError(f"could not start {self.workers} local Dask workers: {reason}") from exc
        self._restore_settings()
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()
        self._cluster = self._client = None
        self._restore_settings()

    def _restore_settings(self) -> None:
        if self._settings is not None:
            self._settings.__exit__(None, None, None)
            self._settings = None

    def __enter__(self) -> "LocalWorkers":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()
