"""Keyed pseudonyms for identifiers read from DICOM (docs/reference.md, "Privacy, weights, licences").

The key is a per-installation secret: ``$COVIDXR_SECRET_KEY_FILE``, else
``$XDG_CONFIG_HOME/covidxr/secret.key`` (``~/.config/covidxr/secret.key``), created on first use with
32 random bytes and mode 0600. Keep it to map the same patient to the same pseudonym across imports.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

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
