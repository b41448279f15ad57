"""Ledger, lock, credentials, loop guard and connector retries (no PACS needed)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from medfuse.errors import WorkflowError
from medfuse.workflow.credentials import resolve_credentials
from medfuse.workflow.ledger import Ledger, job_key
from medfuse.workflow.lock import workflow_lock
from medfuse.workflow.loopguard import is_medfuse_output

SAMPLE = "sample_studies/mr-phantom-two-contrasts"


def test_job_key_ignores_input_order_and_tracks_version_and_parameters() -> None:
    k = job_key("1.2", ["1.2.3", "1.2.4"], "wf", "0.1.0", "abc")
    assert k == job_key("1.2", ["1.2.4", "1.2.3"], "wf", "0.1.0", "abc")
    assert len({k, job_key("1.2", ["1.2.3", "1.2.4"], "wf", "0.2.0", "abc"),
                job_key("1.2", ["1.2.3", "1.2.4"], "wf", "0.1.0", "abd"),
                job_key("1.2", ["1.2.3", "1.2.5"], "wf", "0.1.0", "abc")}) == 4


def test_ledger_states_survive_reopen_and_record_interruptions(tmp_path: Path) -> None:
    db = tmp_path / "state" / "ledger.sqlite"
    with Ledger(db) as ledger:
        ledger.ensure("k1", workflow="wf", study_uid="1.2", input_uids=["1.2.3"], version="0.1", parameters_hash="h")
        ledger.ensure("k1", workflow="wf", study_uid="1.2", input_uids=["1.2.3"], version="0.1", parameters_hash="h")
        ledger.start_attempt("k1")
        ledger.advance("k1", "fusing")
    with Ledger(db) as ledger:  # as after a crash: the state is what was last committed
        assert ledger.get("k1").state == "fusing"
        job = ledger.start_attempt("k1")
        assert job.attempts == 2 and job.state == "fetching"
        ledger.advance("k1", "delivering", output_series_uid="1.2.9")
        ledger.finish("k1", {"pacs": "stored"}, 1.5)
        states = [e["state"] for e in ledger.events("k1")]
        assert states == ["pending", "fetching", "fusing", "interrupted", "fetching", "delivering", "done"]
        assert ledger.output_series_uids() == {"1.2.9"}
        assert ledger.get("k1").outputs == {"pacs": "stored"} and len(ledger.jobs()) == 1


def test_ledger_failure_keeps_reason(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.sqlite") as ledger:
        ledger.ensure("k", workflow="wf", study_uid="1", input_uids=["2"], version="v", parameters_hash="h")
        ledger.start_attempt("k")
        ledger.fail("k", "registration failed: no overlap", 0.2)
        job = ledger.get("k")
        assert (job.state, job.attempts, job.reason) == ("failed", 1, "registration failed: no overlap")


def test_lock_refuses_a_second_run_and_is_freed_when_the_holder_is_killed(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from medfuse.workflow.lock import workflow_lock\n"
        f"with workflow_lock(Path({str(tmp_path)!r}), 'wf'):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(WorkflowError, match="another run of workflow 'wf' is in progress"):
            with workflow_lock(tmp_path, "wf", wait_s=0.6):
                pass
    finally:
        holder.kill()
        holder.wait()
    with workflow_lock(tmp_path, "wf"):  # SIGKILL released it: no stale lock
        assert (tmp_path / "run.lock").exists()


def test_credentials_from_env_and_owner_only_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MF_TEST_PW", "s3cret")
    creds = resolve_credentials({"username": "u", "password_env": "MF_TEST_PW"})
    assert (creds.username, creds.password) == ("u", "s3cret")
    assert "s3cret" not in repr(creds) and "s3cret" not in str(creds)
    monkeypatch.delenv("MF_TEST_PW")
    with pytest.raises(WorkflowError, match="MF_TEST_PW .* is not set"):
        resolve_credentials({"password_env": "MF_TEST_PW"})
    secret = tmp_path / "pacs.cred"
    secret.write_text("username: medfuse\npassword: fromfile\n")
    secret.chmod(0o644)
    with pytest.raises(WorkflowError, match="chmod 600"):
        resolve_credentials({"credentials_file": str(secret)})
    secret.chmod(0o600)
    assert resolve_credentials({"credentials_file": "pacs.cred"}, tmp_path).password == "fromfile"


def test_loop_guard_recognises_only_medfuse_derived_images(repo_root: Path) -> None:
    source = next((repo_root / SAMPLE / "series1_t1").iterdir())
    ds = pydicom.dcmread(source, stop_before_pixels=True)
    assert not is_medfuse_output(ds)  # the sample is DERIVED, but not made by medfuse
    ds.ImageType = ["DERIVED", "SECONDARY"]
    item = pydicom.Dataset()
    item.Manufacturer = "medfuse"
    ds.ContributingEquipmentSequence = [item]
    assert is_medfuse_output(ds)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    assert not is_medfuse_output(ds)


def test_retries_back_off_then_give_up_with_a_one_line_reason() -> None:
    from medfuse.errors import PacsError
    from medfuse.workflow.sources import with_retries

    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("connection refused")
        return "ok"

    assert with_retries(flaky, what="QIDO", retries=2, backoff_s=0.05, retry_on=(ConnectionError,)) == "ok"
    assert calls[1] - calls[0] >= 0.05 and calls[2] - calls[1] >= 0.1  # waits of 0.05 s, then 0.1 s
    calls.clear()
    with pytest.raises(PacsError, match="QIDO failed after 2 tries: connection refused"):
        with_retries(lambda: flaky() and flaky() and flaky(), what="QIDO", retries=1, backoff_s=0.0,
                     retry_on=(ConnectionError,))


def test_unreachable_pacs_is_a_pacs_error_without_the_password() -> None:
    from orthanc_support import free_port

    from medfuse.errors import PacsError
    from medfuse.workflow.credentials import Credentials
    from medfuse.workflow.sources import DicomWebSource, DimseSource

    port = free_port()  # nothing listens there
    web = DicomWebSource(f"http://127.0.0.1:{port}/dicom-web", Credentials("medfuse", "pw-do-not-log"),
                         timeout_s=2, retries=1, backoff_s=0.01)
    with pytest.raises(PacsError) as info:
        web.find_studies({})
    assert "failed after 2 tries" in str(info.value) and "pw-do-not-log" not in str(info.value)
    with pytest.raises(PacsError, match="C-FIND at ORTHANC failed after 1 tries"):
        DimseSource("127.0.0.1", port, "ORTHANC", timeout_s=2, retries=0).find_studies({})
