"""`--engine ray` answers what `--engine local` does: the same rows, values (probabilities to 1e-5) and exit codes,
unreadable files and inputs the check refuses included; a rerun skips the parts already written."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from conftest import import_or_required_under_ci, xray_pixels
from covidxr.cli import main

IMAGES = 40


def ray_or_skip():
    """Ray (the `ray` extra; required under CI, where `make install` installs the dev extra)."""
    return import_or_required_under_ci("ray", "pip install 'covidxr[ray]'; the dev extra installs it")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """One Ray on two CPUs for the module, and a results cache of its own."""
    ray = ray_or_skip()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Radiograph-like images of several sizes (one below the low-resolution warning), an all-black image the
    shipped input check refuses, and an unreadable file."""
    root = tmp_path_factory.mktemp("images")
    for index in range(IMAGES):
        size = 200 if index == 7 else 260 + 10 * (index % 5)
        cv2.imwrite(str(root / f"{index:03d}.png"), xray_pixels(index, size))
    cv2.imwrite(str(root / "black.png"), np.zeros((300, 300), np.uint8))
    (root / "broken.png").write_bytes(b"not an image")
    return root


def predict_json(capsys, folder, *options: str) -> tuple[int, list[dict]]:
    code = main(["predict", str(folder), "--json", *options])
    return code, json.loads(capsys.readouterr().out)["predictions"]


def assert_same_predictions(local: list[dict], other: list[dict]) -> None:
    assert [row["path"] for row in other] == [row["path"] for row in local]
    for mine, theirs in zip(local, other):
        mine, theirs = dict(mine), dict(theirs)
        probabilities, others = mine.pop("probabilities"), theirs.pop("probabilities")
        probability, other_probability = mine.pop("probability"), theirs.pop("probability")
        assert theirs == mine
        assert (others is None) == (probabilities is None)
        if probabilities is not None:
            assert others.keys() == probabilities.keys()
            assert np.allclose([others[k] for k in probabilities], list(probabilities.values()), rtol=0, atol=1e-5)
            assert other_probability == pytest.approx(probability, abs=1e-5)


@pytest.mark.parametrize("options", [(), ("--no-input-check",)], ids=["input-check", "no-input-check"])
def test_the_ray_engine_answers_what_the_local_engine_does(local_ray, folder, capsys, options):
    local_code, local = predict_json(capsys, folder, *options)
    ray_code, on_ray = predict_json(capsys, folder, *options, "--engine", "ray")
    assert ray_code == local_code == 3  # the unreadable file (and, checked, the refused inputs)
    assert len(on_ray) == IMAGES + 2
    assert_same_predictions(local, on_ray)
    broken = next(row for row in on_ray if row["path"].endswith("broken.png"))
    assert broken["status"] == "error" and broken["error"]
    black = next(row for row in on_ray if row["path"].endswith("black.png"))
    assert black["input_check"]["status"] == ("refused" if options == () else "skipped")
    if options:
        assert sum(row["probabilities"] is not None for row in on_ray) == IMAGES + 1
        assert any(row["warnings"] for row in on_ray)


def test_the_ray_engine_writes_the_same_csv(local_ray, folder, tmp_path):
    assert main(["predict", str(folder), "--no-input-check", "--csv", str(tmp_path / "local.csv")]) == 3
    assert main(["predict", str(folder), "--no-input-check", "--csv", str(tmp_path / "ray.csv"),
                 "--engine", "ray"]) == 3
    local, on_ray = (list(csv.reader((tmp_path / name).open())) for name in ("local.csv", "ray.csv"))
    assert on_ray[0] == local[0] and len(on_ray) == len(local) == IMAGES + 3
    numbers = slice(7, 10)  # probability, p_non-covid, p_covid
    for mine, theirs in zip(local[1:], on_ray[1:]):
        assert theirs[:7] + theirs[10:] == mine[:7] + mine[10:]
        for a, b in zip(mine[numbers], theirs[numbers]):
            assert (a == b == "") or abs(float(a) - float(b)) <= 1e-5


def test_a_rerun_predicts_only_the_parts_not_written(local_ray, folder, tmp_path, capsys, monkeypatch):
    import covidxr.engines.ray as engine

    copy = tmp_path / "copy"
    copy.mkdir()
    for path in sorted(folder.iterdir())[:12]:
        (copy / path.name).write_bytes(path.read_bytes())
    monkeypatch.setattr(engine, "PART", 4)
    first_code, first = predict_json(capsys, copy, "--no-input-check", "--engine", "ray")
    runs = []
    original = engine.RayEngine._run
    monkeypatch.setattr(engine.RayEngine, "_run", staticmethod(
        lambda request, parts, files, todo: (runs.append(list(todo)), original(request, parts, files, todo))))
    assert predict_json(capsys, copy, "--no-input-check", "--engine", "ray") == (first_code, first)
    assert runs == []  # everything was written: Ray is not asked
    cv2.imwrite(str(copy / "005.png"), xray_pixels(99, 280))  # part 1 (files 4..7) changes
    code, again = predict_json(capsys, copy, "--no-input-check", "--engine", "ray")
    assert runs == [[1]] and code == first_code
    changed = [row["path"] for row, before in zip(again, first) if row != before]
    assert changed == [str(copy / "005.png")]


def test_a_ray_address_without_the_ray_engine_is_refused(folder, capsys):
    assert main(["predict", str(folder), "--ray-address", "head:6379"]) == 2
    error = capsys.readouterr().err
    assert "--ray-address" in error and "head:6379" in error and "needs --engine ray" in error
