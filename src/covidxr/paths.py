"""Where covidxr keeps what it can rebuild: one folder per kind under $XDG_CACHE_HOME/covidxr (default
~/.cache/covidxr), never beside a model, whose folder (the installed package) may be read-only."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache(kind: str) -> Path:
    """$XDG_CACHE_HOME/covidxr/KIND (pixels, onnxruntime, predictions, segments, occlusion...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "covidxr" / kind
