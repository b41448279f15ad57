"""Test helpers for the workflow tests: a real Orthanc on loopback, and study copies.

:class:`OrthancServer` starts the Debian ``Orthanc`` binary with the DICOMweb
plugin on free 127.0.0.1 ports, a temporary storage folder and HTTP basic
authentication, and stops it again. :func:`copy_study` makes a new study from
a DICOM study folder, with fresh Study/Series/SOP UIDs and patient ID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pydicom
import requests
from pydicom.uid import generate_uid

ORTHANC_BIN = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
DICOMWEB_PLUGIN = next(
    (str(Path(d) / n) for d in PLUGIN_DIRS for n in ("libOrthancDicomWeb.so",) if (Path(d) / n).exists()), None
)
USER, PASSWORD = "medfuse", "test-only-secret"
MEDFUSE_AET = "MEDFUSE"


def orthanc_missing_reason() -> str | None:
    """Why the Orthanc tests cannot run here, or None when they can."""
    if not Path(ORTHANC_BIN).exists():
        return "Orthanc is not installed (Debian package 'orthanc')"
    if DICOMWEB_PLUGIN is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OrthancServer:
    """A throw-away Orthanc: ``start()`` it, use its URLs, ``stop()`` it.

    Parameters
    ----------
    root : Path
        Folder for its configuration, storage and log.
    lua_scripts : list of Path, optional
        Lua scripts to load (e.g. the medfuse trigger).
    env : dict, optional
        Extra environment for the Orthanc process (seen by Lua ``os.getenv``).
    """

    def __init__(self, root: Path, *, lua_scripts: list[Path] | None = None, env: dict | None = None) -> None:
        self.root = Path(root)
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.aet = "ORTHANC"
        self.lua_scripts = [str(Path(p).resolve()) for p in (lua_scripts or [])]
        self.env = env or {}
        self.process: subprocess.Popen | None = None
        self.session = requests.Session()
        self.session.auth = (USER, PASSWORD)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def config(self) -> dict:
        return {
            "Name": "medfuse-test",
            "StorageDirectory": str(self.root / "storage"),
            "IndexDirectory": str(self.root / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full"},
            "DicomModalities": {
                "medfuse": {"AET": MEDFUSE_AET, "Host": "127.0.0.1", "Port": 104,
                            "AllowEcho": True, "AllowFind": True, "AllowGet": True, "AllowMove": True,
                            "AllowStore": True},
            },
            "DicomAlwaysAllowStore": True,
            "StableAge": 1,
            "LuaScripts": self.lua_scripts,
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpDescribeErrors": True,
        }

    def start(self, timeout_s: float = 30.0) -> "OrthancServer":
        self.root.mkdir(parents=True, exist_ok=True)
        cfg = self.root / "orthanc.json"
        cfg.write_text(json.dumps(self.config(), indent=2))
        self.log_path = self.root / "orthanc.log"
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen([ORTHANC_BIN, str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, **self.env}, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start-up:\n{self.log_tail()}")
            try:
                if self.session.get(f"{self.url}/system", timeout=1).ok:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Kill the server: its storage is throw-away, and a graceful stop takes seconds."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- REST helpers (Orthanc's own API, independent of medfuse's connectors)

    def upload(self, folder: Path) -> int:
        n = 0
        for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            r = self.session.post(f"{self.url}/instances", data=f.read_bytes(), timeout=30)
            r.raise_for_status()
            n += 1
        return n

    def find(self, level: str, query: dict) -> list[dict]:
        r = self.session.post(f"{self.url}/tools/find", json={"Level": level, "Query": query, "Expand": True},
                              timeout=30)
        r.raise_for_status()
        return r.json()

    def series_of_study(self, study_uid: str) -> list[dict]:
        """Each series of the study: its MainDicomTags and instance count."""
        out = []
        for series in self.find("Series", {"StudyInstanceUID": study_uid}):
            out.append({**series["MainDicomTags"], "instances": len(series["Instances"]), "id": series["ID"]})
        return out

    def download_series(self, orthanc_series_id: str, dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        files = []
        r = self.session.get(f"{self.url}/series/{orthanc_series_id}/instances", timeout=30)
        r.raise_for_status()
        for inst in r.json():
            path = dest / f"{inst['ID']}.dcm"
            data = self.session.get(f"{self.url}/instances/{inst['ID']}/file", timeout=30)
            data.raise_for_status()
            path.write_bytes(data.content)
            files.append(path)
        return files


def copy_study(src: Path, dest: Path, index: int, *, slices: dict[str, slice] | None = None) -> str:
    """Write a copy of the study in *src* under *dest* as a different patient and study.

    Study, Series, SOP and Frame of Reference UIDs are replaced by UIDs
    derived from the old ones and *index*; PatientID/PatientName get the
    index. *slices* maps a series folder name to the range of its instances
    (sorted by InstanceNumber) to keep, for faster tests. Returns the new StudyInstanceUID.
    """
    def new_uid(old: str) -> str:
        return str(generate_uid("1.2.826.0.1.3680043.8.498.", entropy_srcs=["medfuse-test-copy", str(index), old]))

    study_uid = None
    for series_dir in sorted(p for p in Path(src).iterdir() if p.is_dir()):
        datasets = [pydicom.dcmread(f) for f in sorted(series_dir.iterdir()) if f.is_file()]
        datasets.sort(key=lambda d: int(d.InstanceNumber))
        if slices and series_dir.name in slices:
            datasets = datasets[slices[series_dir.name]]
        out = dest / series_dir.name
        out.mkdir(parents=True, exist_ok=True)
        for ds in datasets:
            for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
                if keyword in ds:
                    setattr(ds, keyword, new_uid(str(getattr(ds, keyword))))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID = f"MEDFUSE-TEST-{index:02d}"
            ds.PatientName = f"Test^Patient{index:02d}"
            study_uid = str(ds.StudyInstanceUID)
            ds.save_as(out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return study_uid
