"""Keyed pseudonyms for identifiers read from DICOM, and keeping identifying header values out of messages,
warnings and logs (docs/reference.md, "Privacy, weights, licences").

The key is a per-installation secret: ``$COVIDXR_SECRET_KEY_FILE``, else
``$XDG_CONFIG_HOME/covidxr/secret.key`` (``~/.config/covidxr/secret.key``), created on first use with
32 random bytes and mode 0600. Keep it to map the same patient to the same pseudonym across imports.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
import warnings
from pathlib import Path
from typing import Any

from covidxr.errors import CovidxrError


def secret_key_path() -> Path:
    explicit = os.environ.get("COVIDXR_SECRET_KEY_FILE")
    if explicit:
        return Path(explicit)
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "covidxr" / "secret.key"


def secret_key() -> bytes:
    path = secret_key_path()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    key = path.read_bytes()
    if len(key) < 16:
        raise CovidxrError(f"{path}: secret key is {len(key)} bytes; expected at least 16 (delete it for a new one)")
    return key


def pseudonym(identifier: str, key: bytes) -> str:
    """HMAC-SHA256 of an identifier under the installation key, as 24 hex digits."""
    return hmac.new(key, identifier.encode("utf-8"), hashlib.sha256).hexdigest()[:24]


# Attributes whose values identify a patient (or lead to one): never in a message, a log line or a warning.
IDENTIFYING_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs",
                        "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientAddress",
                        "PatientTelephoneNumbers", "IssuerOfPatientID", "MedicalRecordLocator", "AccessionNumber",
                        "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName",
                        "InstitutionAddress", "StationName")
REDACTED = "<redacted>"
_QUOTED = re.compile(r"""(b?)(['"])(?:(?!\2).){1,200}\2""")
_HEADER_LIBRARIES = r"(pydicom|highdicom)(\..*)?$"
_LIBRARY_LOGGERS = ("pydicom", "highdicom")
_boundary = threading.Lock()


def identifying_values(dataset: Any) -> list[str]:
    """The identifying values a DICOM dataset holds (names also split into their components), longest first."""
    values: set[str] = set()
    for keyword in IDENTIFYING_KEYWORDS:
        try:
            value = dataset.get(keyword)
        except Exception:  # noqa: BLE001 - a malformed element: its raw bytes are redacted by quoting rules below
            continue
        items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
        for item in items:
            text = str(item or "").strip()
            values.update(part for part in [text, *re.split(r"[\^=]", text)] if len(part.strip()) >= 2)
    return sorted(values, key=len, reverse=True)


def describe_error(error: BaseException, dataset: Any = None) -> str:
    """The library's own message, as `Type: message`, without identifying values: those of `dataset` are
    replaced where it is known; without it, every quoted literal is (a parser may quote the raw bytes it read)."""
    text = " ".join(str(error).split())
    if dataset is None:
        text = _QUOTED.sub(lambda found: f"{found.group(1)}{found.group(2)}{REDACTED}{found.group(2)}", text)
    else:
        for value in identifying_values(dataset):
            text = text.replace(value, REDACTED)
    text = text[:300] + ("…" if len(text) > 300 else "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _drop(_record: logging.LogRecord) -> bool:
    return False


def keep_header_values_out_of_logs() -> None:
    """Drop, for this whole process, the warnings and log records of pydicom and highdicom: they quote header
    values (highdicom quotes any one-part patient name; pydicom any value it finds invalid), and covidxr
    reports the outcome itself. Process-wide on purpose: `warnings.catch_warnings` swaps the global filter list
    and is not thread-safe (concurrent requests race and can leave filters stuck), whereas one filter added once
    and a filter on the libraries' loggers are read-only while requests run. Idempotent: it re-adds its warning
    filter when something (another library's `catch_warnings`) has removed it."""
    with _boundary:
        if not any(entry[0] == "ignore" and entry[3] is not None and entry[3].pattern == _HEADER_LIBRARIES
                   for entry in warnings.filters):
            warnings.filterwarnings("ignore", module=_HEADER_LIBRARIES)
        for name in _LIBRARY_LOGGERS:
            logger = logging.getLogger(name)
            if _drop not in logger.filters:
                logger.addFilter(_drop)
