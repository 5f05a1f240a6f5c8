"""`covidxr dicomweb`: classify the radiographs of studies on a DICOMweb server (Orthanc, or any PACS that
speaks DICOMweb) and store the results back in the same studies, through dicomweb-client.

QIDO-RS lists each study's instances; instances that are not single-frame CR/DX images are skipped with
the reason, and so are those that already hold this model's results (the result UIDs are derived from the
source and the weights, see covidxr.dicom.sr). WADO-RS retrieves the others; each gets its Secondary
Capture stored first, then its SR (STOW-RS), so an SR never exists without its overlay; a failure says
which one is missing. A server that is down, keeps answering 'busy', or refuses access stops the run with
one error after a bounded number of attempts. Each answer, headers and body, must arrive whole within a
deadline (a server trickling bytes cannot hold the run) and within a size cap; searches page with `offset`
up to a page cap, and a server that ignores `offset` (answering the same page again) is noticed. Answers
that are not DICOM JSON stop the run with a message saying so. Nothing identifying is printed: instances
are named by UID.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import UID
from retrying import RetryError

from covidxr.data.privacy import describe_error, keep_header_values_out_of_logs
from covidxr.dicom.results import DicomResultError, InputRefused, ResultObjects, model_identity, results_of
from covidxr.dicom.source import skip_reason
from covidxr.dicom.sr import ModelIdentity, ResultUIDs
from covidxr.dicom.transport import AnswerTooLarge, AnswerTooSlow, DeadlineAdapter
from covidxr.errors import CovidxrError, UsageError
from covidxr.predict import Predictor
from covidxr.progress import progress_bar

T = TypeVar("T")
DEFAULT_ATTEMPTS = 4
DEFAULT_WAIT_MS = 500
TOKEN_ENVIRONMENT = "COVIDXR_DICOMWEB_TOKEN"
INSTANCE_FIELDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                   "NumberOfFrames", "InstanceNumber")
ACCESS_REFUSED = (401, 403, 407)
DEFAULT_DEADLINE = 300.0  # seconds for one whole answer, however the server paces its bytes
PAGE_SIZE = 500
MAX_PAGES = 200
log = logging.getLogger("covidxr.dicomweb")


class DicomWebError(CovidxrError):
    """The server is unreachable, kept failing, or refuses access: the run stops. `reports` holds what was
    done before."""

    def __init__(self, message: str, reports: Sequence[InstanceReport] = ()):
        super().__init__(message)
        self.reports = list(reports)


class RequestFailed(CovidxrError):
    """The server answered one request with an error (not an access refusal): that instance failed."""


@dataclass
class InstanceReport:
    """What happened to one instance: `stored`, `skipped` or `failed`, and why."""

    study: str
    series: str
    instance: str
    status: str
    reason: str = ""


@dataclass
class Server:
    """A DICOMweb server and how patiently to talk to it."""

    url: str
    client: DICOMwebClient
    attempts: int = DEFAULT_ATTEMPTS

    @property
    def tries(self) -> str:
        return f"{self.attempts} attempt" + ("s" if self.attempts != 1 else "")

    def call(self, action: str, request: Callable[[], T]) -> T:
        """`request()`, its errors turned into one clear message (the client retries within `attempts`)."""
        try:
            return request()
        except RetryError as error:
            response = error.last_attempt.value
            raise DicomWebError(f"{self.url}: the server kept answering HTTP {response.status_code} {response.reason} "
                                f"to {action} ({self.tries})") from None
        except requests.HTTPError as error:
            status, reason = error.response.status_code, error.response.reason
            message = f"{self.url}: the server refused to {action} (HTTP {status} {reason})"
            if status in ACCESS_REFUSED:
                raise DicomWebError(message + f"; set {TOKEN_ENVIRONMENT} to a bearer token if it needs one") from None
            raise RequestFailed(message) from None
        except requests.JSONDecodeError:
            raise DicomWebError(f"{self.url}: the answer to {action} is not JSON (expected DICOM JSON)") from None
        except (AnswerTooSlow, AnswerTooLarge) as error:
            raise DicomWebError(f"{self.url}: gave up on the answer to {action}: {error}") from None
        except (requests.ConnectionError, requests.Timeout) as error:
            raise DicomWebError(f"cannot reach the DICOMweb server at {self.url} to {action} "
                                f"({self.tries}): {_short(error)}") from None


def _short(error: Exception) -> str:
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(error))
    if found:
        return found.group(1).strip().lower()
    return "timed out" if isinstance(error, requests.Timeout) else type(error).__name__


def check_url(url: str) -> None:
    """UsageError unless `url` is http(s)://HOST[:PORT]/PATH with a port in range."""
    expected = "expected http(s)://HOST[:PORT]/PATH of a DICOMweb service"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError as error:
        raise UsageError(f"{error}; {expected}", "url", url) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(expected, "url", url)


def connect(url: str, attempts: int | None = None, wait_ms: int = DEFAULT_WAIT_MS, timeout: float = 60.0,
            deadline: float | None = None) -> Server:
    """A client of the DICOMweb service at `url` (e.g. http://localhost:8042/dicom-web for Orthanc): up to
    `attempts` tries per request, waiting 2x, 4x, ... `wait_ms` between them, when the server cannot be
    reached or answers 408/429/503/504 (default attempts: DEFAULT_ATTEMPTS); `timeout` seconds per read and
    `deadline` seconds for each whole answer (default DEFAULT_DEADLINE). A bearer token is read from
    $COVIDXR_DICOMWEB_TOKEN when set."""
    attempts = DEFAULT_ATTEMPTS if attempts is None else attempts
    deadline = DEFAULT_DEADLINE if deadline is None else deadline
    if attempts < 1:
        raise UsageError("must be at least 1", "attempts", attempts)
    check_url(url)
    token = os.environ.get(TOKEN_ENVIRONMENT)
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, DeadlineAdapter(deadline))
    try:
        client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout,
                                headers={"Authorization": f"Bearer {token}"} if token else None)
    except ValueError as error:
        raise UsageError(f"{error}; expected http(s)://HOST[:PORT]/PATH of a DICOMweb service", "url", url) from None
    client.set_http_retry_params(retry=True, max_attempts=attempts, wait_exponential_multiplier=wait_ms)
    return Server(url, client, attempts)


@dataclass
class Study:
    uid: str
    headers: list[Dataset] = field(default_factory=list)
    problem: str = ""

    @property
    def present(self) -> set[str]:
        return {str(header.get("SOPInstanceUID", "")) for header in self.headers}


def _search(server: Server, action: str, search: Callable[..., list], **criteria) -> list[Dataset]:
    """Every result of a QIDO-RS search, page by page (`offset`), at most MAX_PAGES pages; a page seen before
    means the server ignores `offset`: paging stops there, with a warning."""
    results: list[Dataset] = []
    pages: set[str] = set()
    for _ in range(MAX_PAGES):
        found = server.call(action, lambda: search(offset=len(results), limit=PAGE_SIZE, get_remaining=False,
                                                   **criteria))
        if not found:
            return results
        page = json.dumps(found, sort_keys=True)
        if page in pages:
            log.warning("%s: the server answered the same page twice to %s (it ignores 'offset'); %d result(s) "
                        "kept", server.url, action, len(results))
            return results
        pages.add(page)
        results += _datasets(server, action, found)
    raise DicomWebError(f"{server.url}: more than {MAX_PAGES} pages of {PAGE_SIZE} answers to {action}; name the "
                        "studies with --study")


def _datasets(server: Server, action: str, found: object) -> list[Dataset]:
    """QIDO-RS answers as datasets; DicomWebError when they are not a list of DICOM JSON objects."""
    if not isinstance(found, list) or not all(isinstance(item, dict) for item in found):
        raise DicomWebError(f"{server.url}: the answer to {action} is not a list of DICOM JSON objects "
                            f"(got {type(found).__name__}{' of other things' if isinstance(found, list) else ''})")
    try:
        return [Dataset.from_json(item) for item in found]
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise DicomWebError(f"{server.url}: the answer to {action} is not valid DICOM JSON "
                            f"({describe_error(error)})") from None


def _valid_uid(value: object) -> bool:
    return isinstance(value, str) and UID(value).is_valid


def find_studies(server: Server, studies: Sequence[str] | None) -> list[Study]:
    """The instances (QIDO-RS headers) of the named studies, or of every study on the server. A study the
    server lists without a valid StudyInstanceUID is reported, not searched."""
    keep_header_values_out_of_logs()
    listed = []
    if studies:
        for uid in studies:
            if not _valid_uid(uid):
                raise UsageError("not a valid DICOM UID (digits and dots, at most 64 characters)", "studies", uid)
    else:
        found = [str(item.get("StudyInstanceUID", "")) for item in _search(
            server, "list its studies", server.client.search_for_studies, fields=["StudyInstanceUID"])]
        studies = sorted({uid for uid in found if _valid_uid(uid)})
        listed += [Study(uid or "-", problem="the server listed a study without a valid StudyInstanceUID")
                   for uid in sorted({uid for uid in found if not _valid_uid(uid)})]
    for uid in studies:
        try:
            headers = _search(server, f"list the instances of study {uid}", server.client.search_for_instances,
                              study_instance_uid=uid, fields=list(INSTANCE_FIELDS))
        except RequestFailed as error:  # e.g. 404 for a study the server does not hold
            listed.append(Study(uid, problem=str(error)))
            continue
        for header in headers:
            header.StudyInstanceUID = header.get("StudyInstanceUID") or uid
        listed.append(Study(uid, headers))
    return listed


def _report(header: Dataset, status: str, reason: str = "") -> InstanceReport:
    return InstanceReport(str(header.get("StudyInstanceUID", "")), str(header.get("SeriesInstanceUID", "")),
                          str(header.get("SOPInstanceUID", "")), status, reason)


def _store(server: Server, dataset: Dataset, study: str, what: str) -> str | None:
    """Store one object; None when stored, else the reason the server gave."""
    try:
        answer = server.call(f"store the {what}", lambda: server.client.store_instances([dataset], study))
    except RequestFailed as error:
        return str(error)
    failed = [item for item in answer.get("FailedSOPSequence", [])
              if item.get("ReferencedSOPInstanceUID") == dataset.SOPInstanceUID]
    if failed:
        return f"the server rejected it (failure reason 0x{int(failed[0].get('FailureReason', 0)):04X})"
    return None


def _store_both(server: Server, header: Dataset, objects: ResultObjects, present: set[str]) -> InstanceReport:
    study = str(header.StudyInstanceUID)
    if objects.sc.SOPInstanceUID not in present:
        failure = _store(server, objects.sc, study, "Secondary Capture")
        if failure:
            return _report(header, "failed", f"SC not stored ({failure}), so the SR was not stored either")
    try:
        failure = _store(server, objects.sr, study, "SR")
    except DicomWebError as error:
        raise DicomWebError(str(error), [_report(header, "failed", f"SR not stored ({error}); its SC "
                                                 f"{objects.sc.SOPInstanceUID} is stored without it")]) from None
    if failure:
        return _report(header, "failed", f"SR not stored ({failure}); its SC {objects.sc.SOPInstanceUID} is stored "
                                         "without it")
    result = objects.classification
    return _report(header, "stored", f"{result.label}, P(COVID-19) {result.probability:.3f}")


def _classify_instance(server: Server, predictor: Predictor, header: Dataset, present: set[str]) -> InstanceReport:
    try:
        dataset = server.call(f"retrieve instance {header.SOPInstanceUID}", lambda: server.client.retrieve_instance(
            str(header.StudyInstanceUID), str(header.SeriesInstanceUID), str(header.SOPInstanceUID)))
    except RequestFailed as error:
        return _report(header, "failed", str(error))
    if "PixelData" not in dataset:
        return _report(header, "skipped", "no pixel data")
    try:
        objects = results_of(predictor, dataset, str(header.SOPInstanceUID), radiographs_only=True)
    except InputRefused as error:
        return _report(header, "skipped", error.problem)
    except DicomResultError as error:
        return _report(header, "failed", error.problem)
    return _store_both(server, header, objects, present)


def _triage(study: Study, model: ModelIdentity) -> list[tuple[Dataset, str | None]]:
    """Each instance of a study with the reason it is skipped (None: to classify)."""
    candidates = {str(header.SOPInstanceUID): ResultUIDs.derive(header, model) for header in study.headers
                  if skip_reason(header, radiographs_only=True) is None}
    ours = {uid for uids in candidates.values() for uid in (uids.sr_instance, uids.sc_instance)}
    present, triaged = study.present, []
    for header in study.headers:
        uid = str(header.get("SOPInstanceUID", ""))
        if uid in ours:
            reason = "a covidxr result of this model"
        elif uid in candidates:
            done = {candidates[uid].sr_instance, candidates[uid].sc_instance} <= present
            reason = "already holds this model's SR and SC" if done else None
        else:
            reason = skip_reason(header, radiographs_only=True)
        triaged.append((header, reason))
    return triaged


def classify_studies(server: Server, predictor: Predictor,
                     studies: Sequence[str] | None = None) -> list[InstanceReport]:
    """Classify the CR/DX instances of `studies` (default: every study on the server) that lack this model's
    results, and store the results there. One report per instance; DicomWebError stops the run."""
    model = model_identity(predictor)
    reports, todo = [], []
    for study in find_studies(server, studies):
        if not study.headers:
            reports.append(InstanceReport(study.uid, "", "", "failed",
                                          study.problem or "no instance found in this study"))
        for header, reason in _triage(study, model):
            if reason:
                reports.append(_report(header, "skipped", reason))
            else:
                todo.append((header, study.present))
    with progress_bar() as bar:
        task = bar.add_task("classifying and storing", total=len(todo))
        for header, present in todo:
            try:
                reports.append(_classify_instance(server, predictor, header, present))
            except DicomWebError as error:
                raise DicomWebError(str(error), reports + error.reports) from None
            bar.advance(task)
    return reports


def summary(reports: Sequence[InstanceReport]) -> list[str]:
    """Counts per status, and per reason for the skipped ones."""
    counts = Counter(report.status for report in reports)
    skipped = Counter(report.reason for report in reports if report.status == "skipped")
    lines = [f"{counts['stored']} stored, {counts['skipped']} skipped, {counts['failed']} failed"]
    lines += [f"  skipped {count}: {reason}" for reason, count in skipped.most_common()]
    return lines
