"""Warm a local Dask worker while it starts (a dask ``preload`` module).

A worker's first chunk used to pay for numba's import and start-up, the
compiled kernels' loading and the CNN session (about 0.6 s on the 2-core
machine) inside the fuse stage, where every core is busy. Local workers start
while the map stage runs (:class:`medfuse.volume.local_cluster.LocalWorkers`),
which leaves part of a core idle; this module makes a starting worker fuse
one tiny synthetic chunk with the run's configuration then, so that all of
that is done before its first real chunk arrives.

The configuration comes in the environment variable :data:`ENVIRONMENT`
(JSON of :meth:`FusionConfig.to_dict`), set by ``LocalWorkers`` for the
workers it spawns. The warm-up changes no result (the same kernels and
session run the real chunks), and a failure here is ignored: the first real
chunk does the same work and reports any error with its own message.
"""

from __future__ import annotations

import json
import os

import numpy as np

__all__ = ["ENVIRONMENT", "dask_setup", "warm"]

#: Environment variable carrying the run's FusionConfig (JSON) to the worker processes.
ENVIRONMENT = "MEDFUSE_WORKER_WARMUP"

#: Side of the synthetic warm-up slices: large enough for every pyramid level and the CNN's stride.
_SIDE = 64


def warm(config_json: str) -> None:
    """Fuse one synthetic two-source chunk with the configuration *config_json* (JSON of ``to_dict``)."""
    from medfuse.core.config import FusionConfig
    from medfuse.volume.chunk_task import fuse_chunk

    config = FusionConfig(**json.loads(config_json))
    ramp = np.linspace(0.0, 1.0, _SIDE * _SIDE, dtype=np.float32).reshape(1, _SIDE, _SIDE)
    stack = np.stack([ramp, ramp[:, ::-1].copy()])
    fuse_chunk(stack, np.ones(stack.shape, bool), config, None)


def dask_setup(worker) -> None:  # noqa: ARG001 (dask's preload signature)
    """Dask's preload hook: warm this worker process when the environment asks for it."""
    spec = os.environ.get(ENVIRONMENT)
    if not spec:
        return
    try:
        warm(spec)
    except Exception:  # noqa: BLE001 - an optimisation only; the real first chunk reports any error
        pass
