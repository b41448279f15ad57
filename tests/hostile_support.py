"""Helpers for the hostile-input tests: run the CLI and check how it refuses.

:func:`run_cli` runs ``medfuse`` in-process (fast); :func:`run_limited`
runs it in a subprocess under an address-space limit (``RLIMIT_AS``), for
inputs that attack a parser and could otherwise allocate without bound.
:func:`assert_refused` checks what every refusal must show: the expected
exit code, no traceback and no internal error (exit 70), one line on
stderr naming the input and the reason, and nothing at the output path.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom

from medfuse.cli.app import main

#: Address-space limit for hostile-parser subprocesses: importing medfuse and
#: converting a 4-slice series needs well under it (600 MiB was enough when measured).
MEMORY_LIMIT = 1 << 30

_LIMITED = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from medfuse.cli.app import main
sys.exit(main(sys.argv[1:]))
"""


BATCH_SCRIPT = """
import contextlib, io, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from medfuse.cli.app import main
results = []
for argv in json.loads(open(sys.argv[1]).read()):
    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue(), time.monotonic() - started])
sys.__stdout__.write(json.dumps(results))
"""


def run_limited_batch(commands: list[list], *, limit: int = MEMORY_LIMIT,
                      timeout: float = 300) -> list[tuple[int, str, str, float]]:
    """``medfuse ARGV`` for each of *commands*, one after another in one subprocess with RLIMIT_AS = *limit*.

    Returns (exit code, stdout, stderr, seconds) per command. One process
    saves the interpreter's start-up per command; a crash of any command
    (a segfault, or memory beyond the limit outside medfuse's handling)
    fails the whole batch, with its stderr in the assertion.
    """
    argvs = [[str(a) for a in argv] for argv in commands]
    with tempfile.TemporaryDirectory(prefix="medfuse-batch-") as folder:
        listing = Path(folder) / "commands.json"
        listing.write_text(json.dumps(argvs))
        done = subprocess.run([sys.executable, "-c", BATCH_SCRIPT.format(limit=limit), str(listing)],
                              capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"batch process died with {done.returncode}: {done.stderr[-2000:]}"
    return [tuple(r) for r in json.loads(done.stdout)]


def run_cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``medfuse ARGV`` run in this process."""
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_limited(argv: list[str], *, limit: int = MEMORY_LIMIT, timeout: float = 120) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``medfuse ARGV`` in a subprocess with RLIMIT_AS = *limit*."""
    done = subprocess.run([sys.executable, "-c", _LIMITED.format(limit=limit), *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def assert_refused(result: tuple, code: int, *words: str, output: Path | None = None) -> str:
    """Check a refusal; return its one-line message (without the 'medfuse: error: ' prefix)."""
    rc, _out, err = result[:3]
    assert "Traceback" not in err and "internal error" not in err, err
    assert "MemoryError" not in err and "RecursionError" not in err, err
    assert rc == code, f"exit {rc}, expected {code}: {err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("medfuse: error: "), err
    message = lines[0][len("medfuse: error: "):]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    if output is not None:
        assert not output.exists(), f"{output} was written"
        leftovers = [p.name for p in output.parent.iterdir() if p.name.startswith(("." + output.name, output.name))]
        assert not leftovers, leftovers
    return message


def copy_series(src: Path, dst: Path, edit=None) -> list[Path]:
    """Copy every file of *src* into *dst* through pydicom, calling ``edit(ds, index)`` on each."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for i, path in enumerate(sorted(p for p in src.iterdir() if p.is_file())):
        ds = pydicom.dcmread(path)
        if edit is not None:
            edit(ds, i)
        target = dst / path.name
        ds.save_as(target)
        out.append(target)
    return out


def pixel_element_offset(data: bytes) -> int:
    """Offset of the last Pixel Data element tag (7FE0,0010) in a little-endian file."""
    offset = data.rfind(b"\xe0\x7f\x10\x00")
    assert offset > 0
    return offset
