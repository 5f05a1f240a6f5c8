"""Where a command's per-image work runs: `local` (this machine: worker processes decode, this process runs the
model) or `ray` (Ray Data, on a Ray cluster or a Ray started for the command). One seam under the commands: a
command hands its inputs to `engine(name, address)` (`predict`, `segment`, `prepare`, and `occlusion` for the
audit); both engines answer the same objects (`Prediction`, `SegmentedFile`, `PrepareReport`, `OcclusionPass`) in
input order, so what a command prints, writes and exits with does not depend on the engine.
"""

from __future__ import annotations

from covidxr.engines.base import Engine, Stage
from covidxr.errors import UsageError

ENGINES = ("local", "ray")
__all__ = ["ENGINES", "Engine", "Stage", "engine"]


def engine(name: str, address: str | None = None) -> Engine:
    """The engine called `name`; `address`: the Ray cluster's (default $RAY_ADDRESS, else a Ray started here)."""
    if name == "local":
        if address:
            raise UsageError("needs --engine ray (the local engine runs on this machine)", "ray_address", address)
        from covidxr.engines.local import LocalEngine

        return LocalEngine()
    if name == "ray":
        from covidxr.engines.ray import RayEngine

        return RayEngine(address)
    raise UsageError(f"unknown engine {name!r}: choose one of {', '.join(ENGINES)}")
