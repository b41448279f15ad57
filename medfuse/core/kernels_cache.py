"""Where the compiled kernels of :mod:`medfuse.core.kernels` are cached on disk.

``$NUMBA_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/medfuse/numba`` (default
``~/.cache/medfuse/numba``), created if needed and checked by a real write.
Chosen when this module is imported, before numba is (numba reads
``NUMBA_CACHE_DIR`` at its import), and exported in ``NUMBA_CACHE_DIR`` so
that Dask workers started from this process share it. :data:`CACHE_DIR` is
None where the folder cannot be written: the kernels then compile in memory.
No numba import here.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

__all__ = ["CACHE_DIR"]

_log = logging.getLogger(__name__)


def _writable_cache_dir() -> str | None:
    """The on-disk cache folder for compiled kernels, created if needed; None where it cannot be written."""
    explicit = os.environ.get("NUMBA_CACHE_DIR")
    if explicit:
        folder = Path(explicit)
    else:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = Path(base) / "medfuse" / "numba"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes access checks on read-only mounts.
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".medfuse-probe-"):
            pass
    except OSError as exc:
        _log.info("compiled-kernel cache %s is not writable (%s); compiling in memory", folder, exc)
        return None
    return str(folder)


#: Where compiled kernels are cached (None: not cached, compiled in memory per process).
CACHE_DIR = _writable_cache_dir()
if CACHE_DIR is not None:
    os.environ["NUMBA_CACHE_DIR"] = CACHE_DIR  # read by numba at import, and inherited by worker processes
