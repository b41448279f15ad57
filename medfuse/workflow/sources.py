"""Where a workflow finds studies and where it stores results.

Three connectors share one small interface (:class:`Source`):

* :class:`FolderSource` — a watched folder of DICOM files.
* :class:`DicomWebSource` — a PACS over DICOMweb: QIDO-RS to query,
  WADO-RS to retrieve, STOW-RS to store (``dicomweb-client``).
* :class:`DimseSource` — a PACS over DIMSE: C-FIND, C-GET, C-STORE (``pynetdicom``).

Network calls time out and are retried with exponential backoff; failures
end as :class:`~medfuse.errors.PacsError` with a one-line reason that never
contains a credential.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, TypeVar

import pydicom
from pydicom.errors import InvalidDicomError

from medfuse.errors import PacsError, WorkflowError
from medfuse.workflow.config import orientation_of
from medfuse.workflow.credentials import Credentials

T = TypeVar("T")


@dataclass(frozen=True)
class RemoteSeries:
    """Series-level facts from a query (no pixel data)."""

    series_uid: str
    modality: str
    description: str
    body_part: str = ""
    n_instances: int | None = None
    orientation: str = ""


@dataclass(frozen=True)
class StudyCandidate:
    """A study a source offers, with its series.

    ``patient_id`` and ``patient_name`` are used only in logs with ``--log-phi``.
    """

    study_uid: str
    series: tuple[RemoteSeries, ...]
    patient_id: str = ""
    patient_name: str = ""


class Source(Protocol):
    """What the runner needs from a connector."""

    can_store: bool

    def find_studies(self, query: dict) -> list[StudyCandidate]:
        """Studies matching *query* (the workflow's ``source.query``, plus ``study_uid`` for one study)."""

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path) -> int:
        """Write the series' instances into *dest* (replaced if present); return how many."""

    def count_instances(self, study_uid: str, series_uid: str) -> int:
        """How many instances of the series the source holds (0 when none)."""

    def store(self, study_uid: str, files: list[Path]) -> None:
        """Store DICOM files into the study (PACS sources only)."""


def with_retries(call: Callable[[], T], *, what: str, retries: int, backoff_s: float,
                 retry_on: tuple[type[BaseException], ...]) -> T:
    """Run *call*; on *retry_on* errors wait ``backoff_s * 2**i`` and try again, up to *retries* times."""
    for attempt in range(retries + 1):
        try:
            return call()
        except retry_on as exc:
            if attempt == retries:
                raise PacsError(f"{what} failed after {retries + 1} tries: {_reason(exc)}") from exc
            time.sleep(backoff_s * (2 ** attempt))
    raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    # requests errors can embed the URL; ours never carry credentials (auth is
    # sent in headers, never in URLs, and URLs with user:pass are refused).
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _study_date_range(since_days: int | None) -> str | None:
    if not since_days:
        return None
    start = _dt.date.today() - _dt.timedelta(days=since_days)
    return f"{start:%Y%m%d}-"


# --------------------------------------------------------------------------- folder


class FolderSource:
    """A watched folder: every DICOM file below *path*, grouped by study.

    A study whose newest file is younger than ``stable_after_s`` is left for
    a later run (it may still be arriving).
    """

    can_store = False

    def __init__(self, path: Path, stable_after_s: float = 60.0) -> None:
        if not Path(path).is_dir():
            raise WorkflowError(f"watched folder {path} does not exist or is not a folder")
        self.path = Path(path)
        self.stable_after_s = stable_after_s
        self._files: dict[tuple[str, str], list[Path]] = {}

    def find_studies(self, query: dict) -> list[StudyCandidate]:
        studies: dict[str, dict] = {}
        newest: dict[str, float] = {}
        self._files.clear()
        for file in sorted(p for p in self.path.rglob("*") if p.is_file()):
            try:
                ds = pydicom.dcmread(file, stop_before_pixels=True, specific_tags=[
                    "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesDescription", "BodyPartExamined",
                    "PatientID", "PatientName", "ImageOrientationPatient"])
            except (InvalidDicomError, OSError, ValueError):
                continue
            study, series = str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))
            if not study or not series:
                continue
            newest[study] = max(newest.get(study, 0.0), file.stat().st_mtime)
            entry = studies.setdefault(study, {"series": {}, "pid": str(ds.get("PatientID", "")),
                                               "pname": str(ds.get("PatientName", ""))})
            entry["series"].setdefault(series, (str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                                                str(ds.get("BodyPartExamined", "")),
                                                orientation_of(ds.get("ImageOrientationPatient"))))
            self._files.setdefault((study, series), []).append(file)
        now = time.time()
        out = []
        for study, entry in sorted(studies.items()):
            if now - newest[study] < self.stable_after_s or query.get("study_uid") not in (None, study):
                continue
            series = tuple(
                RemoteSeries(uid, m, d, b, len(self._files[(study, uid)]), o)
                for uid, (m, d, b, o) in sorted(entry["series"].items())
            )
            out.append(StudyCandidate(study, series, entry["pid"], entry["pname"]))
        return out[: query.get("limit")] if query.get("limit") else out

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path) -> int:
        files = self._files.get((study_uid, series_uid), [])
        dest.mkdir(parents=True, exist_ok=True)
        for i, file in enumerate(files):
            shutil.copy2(file, dest / f"{i:06d}.dcm")
        return len(files)

    def count_instances(self, study_uid: str, series_uid: str) -> int:
        return len(self._files.get((study_uid, series_uid), []))

    def store(self, study_uid: str, files: list[Path]) -> None:
        raise WorkflowError("a watched-folder source cannot store results; use outputs.folder")


# --------------------------------------------------------------------------- DICOMweb


class DicomWebSource:
    """A PACS over DICOMweb (QIDO-RS, WADO-RS, STOW-RS).

    Parameters
    ----------
    url : str
        The DICOMweb root, e.g. ``https://pacs.example.org/dicom-web``.
    credentials : Credentials
        HTTP basic auth (username/password) or a bearer token.
    tls : dict
        ``ca_file``, ``cert_file``, ``key_file``, ``verify``.
    timeout_s, retries, backoff_s : network behaviour.
    """

    can_store = True
    store_batch = 32

    def __init__(self, url: str, credentials: Credentials | None = None, tls: dict | None = None, *,
                 timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 1.0) -> None:
        import requests
        from dicomweb_client.api import DICOMwebClient

        self._requests = requests
        session = requests.Session()
        credentials = credentials or Credentials()
        if credentials.token:
            session.headers["Authorization"] = f"Bearer {credentials.token}"
        elif credentials.username:
            session.auth = (credentials.username, credentials.password)
        tls = tls or {}
        session.verify = tls.get("ca_file") or tls.get("verify", True)
        if tls.get("cert_file"):
            session.cert = (tls["cert_file"], tls["key_file"]) if tls.get("key_file") else tls["cert_file"]
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        self._client.set_http_retry_params(retry=False)  # retries are ours: bounded, with our backoff
        self._retry = dict(retries=retries, backoff_s=backoff_s,
                           retry_on=(requests.ConnectionError, requests.Timeout, requests.HTTPError))

    def _call(self, what: str, call: Callable[[], T]) -> T:
        def once() -> T:
            try:
                return call()
            except self._requests.HTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status in (401, 403):
                    raise PacsError(f"DICOMweb {what} at {self.url} was refused (HTTP {status}): "
                                    "check the workflow's auth username and secret") from exc
                if status is not None and 400 <= status < 500 and status not in (408, 429):
                    raise PacsError(f"DICOMweb {what} at {self.url} failed: HTTP {status}") from exc
                raise

        return with_retries(once, what=f"DICOMweb {what} at {self.url}", **self._retry)

    def find_studies(self, query: dict) -> list[StudyCandidate]:
        filters = {}
        if query.get("study_uid"):
            filters["StudyInstanceUID"] = query["study_uid"]
        if query.get("study_description"):
            filters["StudyDescription"] = query["study_description"]
        date_range = _study_date_range(query.get("since_days"))
        if date_range:
            filters["StudyDate"] = date_range
        studies = self._call("QIDO-RS study query", lambda: self._client.search_for_studies(
            search_filters=filters, limit=query.get("limit"), get_remaining=not query.get("limit"),
            fields=["PatientID", "PatientName", "ModalitiesInStudy"]))
        wanted = set(query.get("modalities_in_study") or [])
        out = []
        for item in studies:
            study = pydicom.Dataset.from_json(item)
            if wanted and not wanted <= set(_as_list(study.get("ModalitiesInStudy"))):
                continue
            uid = str(study.StudyInstanceUID)
            series = self._call("QIDO-RS series query", lambda: self._client.search_for_series(
                uid, fields=["SeriesDescription", "Modality", "BodyPartExamined", "NumberOfSeriesRelatedInstances",
                             "ImageOrientationPatient"]))
            remote = [_remote_series(pydicom.Dataset.from_json(s)) for s in series]
            out.append(StudyCandidate(uid, tuple(sorted(remote, key=lambda r: r.series_uid)),
                                      str(study.get("PatientID", "")), str(study.get("PatientName", ""))))
        return sorted(out, key=lambda c: c.study_uid)

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path) -> int:
        def retrieve() -> int:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            n = 0
            for n, ds in enumerate(self._client.iter_series(study_uid, series_uid), start=1):
                ds.save_as(dest / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
            return n

        return self._call("WADO-RS series retrieve", retrieve)

    def count_instances(self, study_uid: str, series_uid: str) -> int:
        def query() -> int:
            try:
                return len(self._client.search_for_instances(study_uid, series_uid, fields=["SOPInstanceUID"],
                                                             get_remaining=True))
            except self._requests.HTTPError as exc:
                if exc.response is not None and exc.response.status_code == 404:
                    return 0
                raise

        return self._call("QIDO-RS instance query", query)

    def store(self, study_uid: str, files: list[Path]) -> None:
        for start in range(0, len(files), self.store_batch):
            batch = [pydicom.dcmread(f) for f in files[start:start + self.store_batch]]
            self._call("STOW-RS store", lambda: self._client.store_instances(batch, study_uid))


def _remote_series(ds: pydicom.Dataset) -> RemoteSeries:
    """A series-level query answer (QIDO-RS JSON or C-FIND identifier) as a RemoteSeries."""
    count = ds.get("NumberOfSeriesRelatedInstances")
    return RemoteSeries(str(ds.SeriesInstanceUID), str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                        str(ds.get("BodyPartExamined", "")), int(count) if count not in (None, "") else None,
                        orientation_of(ds.get("ImageOrientationPatient")))


def _as_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return [str(value)]


# --------------------------------------------------------------------------- DIMSE

#: Image storage classes medfuse requests for C-GET (role-negotiated) retrieval.
RETRIEVE_STORAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",        # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",      # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4",        # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",      # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.128",      # PET Image
    "1.2.840.10008.5.1.4.1.1.130",      # Enhanced PET Image
    "1.2.840.10008.5.1.4.1.1.20",       # NM Image
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.4",      # Multi-frame True Color SC
    "1.2.840.10008.5.1.4.1.1.4.4",      # Legacy Converted Enhanced MR
    "1.2.840.10008.5.1.4.1.1.2.2",      # Legacy Converted Enhanced CT
    "1.2.840.10008.5.1.4.1.1.30",       # Parametric Map
)


class DimseSource:
    """A PACS over DIMSE: C-FIND (study root), C-GET, C-STORE.

    C-GET is used rather than C-MOVE so the PACS needs no route back to a
    listening medfuse port; the PACS must allow C-GET from *calling_aet*.
    """

    can_store = True

    def __init__(self, host: str, port: int, called_aet: str, calling_aet: str = "MEDFUSE", tls: dict | None = None,
                 *, timeout_s: float = 30.0, retries: int = 3, backoff_s: float = 1.0) -> None:
        self.host, self.port, self.called_aet, self.calling_aet = host, port, called_aet, calling_aet
        self.timeout_s = timeout_s
        self._tls = _ssl_context(tls) if tls else None
        self._retry = dict(retries=retries, backoff_s=backoff_s, retry_on=(PacsError, ConnectionError, OSError))

    def _ae(self):
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        return ae

    def _associate(self, ae, **kw):
        tls_args = (self._tls, self.host) if self._tls else None
        assoc = ae.associate(self.host, self.port, ae_title=self.called_aet, tls_args=tls_args, **kw)
        if not assoc.is_established:
            raise PacsError(f"DIMSE association with {self.called_aet}@{self.host}:{self.port} was rejected or timed out")
        return assoc

    def _find(self, identifier: pydicom.Dataset) -> list[pydicom.Dataset]:
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        def run() -> list[pydicom.Dataset]:
            ae = self._ae()
            ae.add_requested_context(FIND)
            assoc = self._associate(ae)
            try:
                out = []
                for status, ds in assoc.send_c_find(identifier, FIND):
                    code = getattr(status, "Status", None)
                    if code is None:
                        raise PacsError("C-FIND got no response (timeout or aborted association)")
                    if code in (0xFF00, 0xFF01) and ds is not None:
                        out.append(ds)
                    elif code != 0x0000:
                        raise PacsError(f"C-FIND failed with status 0x{code:04X}")
                return out
            finally:
                assoc.release()

        return with_retries(run, what=f"C-FIND at {self.called_aet}", **self._retry)

    def find_studies(self, query: dict) -> list[StudyCandidate]:
        q = pydicom.Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = query.get("study_uid", "")
        q.PatientID = ""
        q.PatientName = ""
        q.ModalitiesInStudy = ""
        q.StudyDate = _study_date_range(query.get("since_days")) or ""
        q.StudyDescription = query.get("study_description", "")
        studies = self._find(q)
        wanted = set(query.get("modalities_in_study") or [])
        out = []
        for study in studies:
            if wanted and not wanted <= set(_as_list(study.get("ModalitiesInStudy"))):
                continue
            s = pydicom.Dataset()
            s.QueryRetrieveLevel = "SERIES"
            s.StudyInstanceUID = study.StudyInstanceUID
            s.SeriesInstanceUID = ""
            s.Modality = ""
            s.SeriesDescription = ""
            s.BodyPartExamined = ""
            s.NumberOfSeriesRelatedInstances = ""
            s.ImageOrientationPatient = ""
            remote = [_remote_series(ds) for ds in self._find(s)]
            out.append(StudyCandidate(str(study.StudyInstanceUID), tuple(sorted(remote, key=lambda r: r.series_uid)),
                                      str(study.get("PatientID", "")), str(study.get("PatientName", ""))))
        out.sort(key=lambda c: c.study_uid)
        return out[: query["limit"]] if query.get("limit") else out

    def fetch_series(self, study_uid: str, series_uid: str, dest: Path) -> int:
        from pynetdicom import build_role, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET

        def run() -> int:
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            received: list[str] = []

            def on_store(event) -> int:
                ds = event.dataset
                ds.file_meta = event.file_meta
                ds.save_as(dest / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
                received.append(ds.SOPInstanceUID)
                return 0x0000

            ae = self._ae()
            ae.add_requested_context(GET)
            for uid in RETRIEVE_STORAGE_CLASSES:
                ae.add_requested_context(uid)
            roles = [build_role(uid, scp_role=True) for uid in RETRIEVE_STORAGE_CLASSES]
            assoc = self._associate(ae, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
            try:
                q = pydicom.Dataset()
                q.QueryRetrieveLevel = "SERIES"
                q.StudyInstanceUID = study_uid
                q.SeriesInstanceUID = series_uid
                final = None
                for status, _ in assoc.send_c_get(q, GET):
                    final = getattr(status, "Status", None)
                    if final is None:
                        raise PacsError("C-GET got no response (timeout or aborted association)")
                if final not in (0x0000, 0xFF00):
                    raise PacsError(f"C-GET of series {series_uid} ended with status 0x{final:04X}")
            finally:
                assoc.release()
            return len(received)

        return with_retries(run, what=f"C-GET from {self.called_aet}", **self._retry)

    def count_instances(self, study_uid: str, series_uid: str) -> int:
        q = pydicom.Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = ""
        return len(self._find(q))

    def store(self, study_uid: str, files: list[Path]) -> None:
        datasets = [pydicom.dcmread(f) for f in files]

        def run() -> None:
            ae = self._ae()
            for ctx in sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}):
                ae.add_requested_context(ctx[0], ctx[1])
            assoc = self._associate(ae)
            try:
                for ds in datasets:
                    status = assoc.send_c_store(ds)
                    code = getattr(status, "Status", None)
                    if code is None:
                        raise PacsError("C-STORE got no response (timeout or aborted association)")
                    if code != 0x0000 and not (0xB000 <= code <= 0xBFFF):
                        raise PacsError(f"C-STORE of {ds.SOPInstanceUID} refused with status 0x{code:04X}")
            finally:
                assoc.release()

        with_retries(run, what=f"C-STORE to {self.called_aet}", **self._retry)


def _ssl_context(tls: dict) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.get("ca_file"))
    if tls.get("verify") is False:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.get("cert_file"):
        ctx.load_cert_chain(tls["cert_file"], tls.get("key_file"))
    return ctx


def open_source(kind: str, settings: dict, credentials: Credentials | None = None) -> Source:
    """Build the connector a workflow's ``source`` names."""
    network = {k: settings[k] for k in ("timeout_s", "retries", "backoff_s") if k in settings}
    if kind == "folder":
        return FolderSource(Path(settings["path"]), float(settings.get("stable_after_s", 60.0)))
    if kind == "dicomweb":
        return DicomWebSource(settings["url"], credentials, settings.get("tls"), **network)
    if kind == "dimse":
        return DimseSource(settings["host"], int(settings["port"]), settings["called_aet"],
                           settings.get("calling_aet", "MEDFUSE"), settings.get("tls"), **network)
    raise WorkflowError(f"unknown source kind {kind!r}")


__all__ = ["DicomWebSource", "DimseSource", "FolderSource", "RemoteSeries", "Source", "StudyCandidate",
           "open_source", "with_retries"]
