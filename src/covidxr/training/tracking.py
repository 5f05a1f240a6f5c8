"""MLflow tracking for `train`, `cv`, `compare` and `evaluate` (`--tracking URI`).

`tracking(uri, experiment, recipe)` opens a scope; runs started inside it (`tracked_run`) are logged to that
store, and a run started inside another run becomes its child (`mlflow.parentRunId`). Outside any scope every
function here does nothing, so that without `--tracking` nothing is logged anywhere. Only database and server
stores are accepted (`sqlite:///mlruns.db`, `http://host:5000`): MLflow's legacy file store (a plain path or a
`file:` URI) is refused. Per-epoch metrics come from Lightning's `MLFlowLogger` (`epoch_logger`); the run's
`metrics.csv` is written as before.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from covidxr.errors import UsageError

ACCEPTED_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")
SKIPPED_ARTIFACTS = {"checkpoints"}  # resumable training state; the run's weights are model.safetensors


@dataclass(frozen=True)
class Scope:
    uri: str
    experiment: str
    recipe: str | None = None
    parent: str | None = None  # run id of the enclosing run
    register: bool = True  # False inside cross-validation: fold models are not registered


_SCOPES: list[Scope] = []


def check_uri(uri: str) -> str:
    """The URI when MLflow can store runs there without its deprecated file store; else a UsageError."""
    scheme = uri.split("://", 1)[0].split("+", 1)[0] if "://" in uri else ""
    if scheme not in ACCEPTED_SCHEMES:
        raise UsageError(f"not a tracking database or server (the file store is not supported); use "
                         f"sqlite:///PATH.db (or {', '.join(s + '://' for s in ACCEPTED_SCHEMES[1:])})",
                         "tracking", uri)
    return uri


def active() -> Scope | None:
    return _SCOPES[-1] if _SCOPES else None


@contextmanager
def tracking(uri: str | None, experiment: str, recipe: str | None = None) -> Iterator[None]:
    """Log runs started inside to `uri` (nothing when None), in `experiment`; models register as `recipe`."""
    if uri is None:
        yield
        return
    _SCOPES.append(Scope(check_uri(uri), experiment, recipe))
    try:
        yield
    finally:
        _SCOPES.pop()


def _client(scope: Scope):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=scope.uri, registry_uri=scope.uri)


def _experiment_id(scope: Scope) -> str:
    client = _client(scope)
    found = client.get_experiment_by_name(scope.experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if scope.uri.startswith("sqlite:///"):  # artifacts beside the database, never in the working directory
        location = (Path(scope.uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(scope.experiment, artifact_location=location)


@contextmanager
def tracked_run(name: str, recipe: str | None = None, register: bool = True) -> Iterator[str | None]:
    """Start an MLflow run (a child of the enclosing one) and yield its id (None when not tracking); runs started
    inside become its children, and register no model when `register` is False. It ends FINISHED, or FAILED
    when the body raises."""
    scope = active()
    if scope is None:
        yield None
        return
    client = _client(scope)
    tags = {"mlflow.parentRunId": scope.parent} if scope.parent else {}
    run_id = client.create_run(_experiment_id(scope), run_name=name, tags=tags).info.run_id
    _SCOPES.append(replace(scope, recipe=recipe or scope.recipe, parent=run_id,
                          register=scope.register and register))
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    finally:
        _SCOPES.pop()
        client.set_terminated(run_id, status)


def epoch_logger(run_id: str | None):
    """Lightning's MLFlowLogger writing into run `run_id` (None when not tracking)."""
    scope = active()
    if scope is None or run_id is None:
        return None
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=scope.experiment, tracking_uri=scope.uri, run_id=run_id)


def flat_params(values: dict, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: `optimisation.lr` -> '0.001'."""
    params: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            params.update(flat_params(value, f"{prefix}{key}."))
        else:
            params[f"{prefix}{key}"] = str(value)
    return params


def flat_metrics(values: dict, prefix: str = "") -> dict[str, float]:
    """The numbers of a result as MLflow metrics: nested keys joined with '.', an interval (`auc_ci: [lo, hi]`, or
    `ci: {"sensitivity": [lo, hi]}`) as `auc_ci_low` and `auc_ci_high`; text, None and NaN are left out."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            metrics.update(flat_metrics(value, f"{name}."))
        elif isinstance(value, list | tuple) and len(value) == 2 and (name.endswith("ci") or ".ci." in name):
            metrics.update(flat_metrics({f"{name}_low": value[0], f"{name}_high": value[1]}))
        elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            metrics[name] = float(value)
    return metrics


def log_result(run_id: str | None, metrics: dict | None = None, params: dict | None = None,
               artifacts: Path | None = None) -> None:
    """Log `params` (a config, flattened), the numbers of `metrics` and `artifacts` (a file, or a folder's files
    but its checkpoints)."""
    scope = active()
    if scope is None or run_id is None:
        return
    from mlflow.entities import Metric, Param

    client = _client(scope)
    flat = flat_params(params or {})
    client.log_batch(run_id, params=[Param(key, value[:6000]) for key, value in flat.items()])
    client.log_batch(run_id, metrics=[Metric(key, value, 0, 0) for key, value in flat_metrics(metrics or {}).items()])
    if artifacts is not None and Path(artifacts).is_file():
        client.log_artifact(run_id, str(artifacts))
    elif artifacts is not None and Path(artifacts).is_dir():
        for entry in sorted(Path(artifacts).iterdir()):
            if entry.name in SKIPPED_ARTIFACTS:
                continue
            if entry.is_dir():
                client.log_artifacts(run_id, str(entry), entry.name)
            else:
                client.log_artifact(run_id, str(entry))


def register_model(run_id: str | None, card: dict) -> None:
    """Register the run's model (its artifacts) under the scope's recipe name, with the model card as the
    version's description and tags."""
    scope = active()
    if scope is None or run_id is None or scope.recipe is None or not scope.register:
        return
    import json

    client = _client(scope)
    if not client.search_registered_models(filter_string=f"name = '{scope.recipe}'"):
        client.create_registered_model(scope.recipe, description=f"covidxr recipe {scope.recipe}; not for clinical use")
    source = f"{client.get_run(run_id).info.artifact_uri}"
    client.create_model_version(scope.recipe, source, run_id=run_id,
                                tags={key: str(value)[:5000] for key, value in flat_metrics(card).items()},
                                description=json.dumps(card, indent=1)[:5000])
