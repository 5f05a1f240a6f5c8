"""`--engine ray` answers what `--engine local` does: the same rows, values (probabilities to 1e-5) and exit codes,
unreadable files and inputs the check refuses included; a rerun skips the parts already written."""

from __future__ import annotations

import csv
import hashlib
import json

import cv2
import numpy as np
import pandas as pd
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
    runs = record_ray_runs(monkeypatch)
    assert predict_json(capsys, copy, "--no-input-check", "--engine", "ray") == (first_code, first)
    assert runs == []  # everything was written: Ray is not asked
    cv2.imwrite(str(copy / "005.png"), xray_pixels(99, 280))  # part 1 (files 4..7) changes
    code, again = predict_json(capsys, copy, "--no-input-check", "--engine", "ray")
    assert runs == [[1]] and code == first_code
    changed = [row["path"] for row, before in zip(again, first) if row != before]
    assert changed == [str(copy / "005.png")]


def record_ray_runs(monkeypatch) -> list[list[int]]:
    """The parts each Ray run is asked for (a run that finds everything done asks Ray nothing)."""
    import covidxr.engines.ray as engine

    runs: list[list[int]] = []
    original = engine.answered_parts

    def recorded(stage, parts, todo):
        runs.append(list(todo))
        return original(stage, parts, todo)
    monkeypatch.setattr(engine, "answered_parts", recorded)
    return runs


def test_a_ray_address_without_the_ray_engine_is_refused(folder, capsys):
    assert main(["predict", str(folder), "--ray-address", "head:6379"]) == 2
    error = capsys.readouterr().err
    assert "--ray-address" in error and "head:6379" in error and "needs --engine ray" in error


@pytest.mark.parametrize("command", [["segment", "-o", "out"], ["prepare", "manifest.csv", "-o", "cache"],
                                     ["audit", "--data", "manifest.csv"]], ids=["segment", "prepare", "audit"])
def test_a_ray_address_with_the_local_engine_is_a_usage_error(command, capsys):
    assert main([*command, "--ray-address", "head:6379"] + (["x.png"] if command[0] == "segment" else [])) == 2
    assert "needs --engine ray" in capsys.readouterr().err


def same_files(folder_a, folder_b) -> list[str]:
    """The names of the PNGs of two folders, after checking their pixels are equal."""
    names = sorted(path.name for path in folder_a.glob("*.png"))
    assert names == sorted(path.name for path in folder_b.glob("*.png"))
    for name in names:
        assert np.array_equal(cv2.imread(str(folder_a / name), cv2.IMREAD_UNCHANGED),
                              cv2.imread(str(folder_b / name), cv2.IMREAD_UNCHANGED)), name
    return names


def test_ray_segments_as_the_local_engine_does(local_ray, folder, tmp_path, capsys):
    """Masks, overlays, segment.csv, printed lines and exit code; an unreadable file, an all-black image and two
    inputs with the same name among them."""
    other = tmp_path / "other"
    other.mkdir()
    (other / "000.png").write_bytes((folder / "003.png").read_bytes())
    paths = [str(folder / f"{index:03d}.png") for index in range(5)] + [
        str(folder / "black.png"), str(folder / "broken.png"), str(other / "000.png")]
    outputs = {}
    for name, options in (("local", []), ("ray", ["--engine", "ray"])):
        code = main(["segment", *paths, "-o", str(tmp_path / name), "--overlay", *options])
        outputs[name] = code, capsys.readouterr().out.replace(str(tmp_path / name), "OUT")
    assert outputs["ray"] == outputs["local"]
    assert outputs["ray"][0] == 3 and "1 failed" in outputs["ray"][1]
    local, on_ray = (pd.read_csv(tmp_path / name / "segment.csv", keep_default_na=False) for name in ("local", "ray"))
    pd.testing.assert_frame_equal(on_ray, local)
    assert on_ray["status"].tolist() == ["ok"] * 6 + ["error", "ok"]
    names = same_files(tmp_path / "local", tmp_path / "ray")
    assert "000-2_lungs.png" in names and "000-2_overlay.png" in names and len(names) == 14


@pytest.fixture(scope="module")
def manifest(folder, tmp_path_factory):
    """An imported manifest of 10 of the folder's images, a row whose file is unreadable and one whose file
    changed since it was imported (prepare refuses it: its sha256 differs)."""
    from covidxr.data import import_folders

    root = tmp_path_factory.mktemp("classes")
    for index in range(10):
        target = root / ("covid" if index % 2 else "normal") / f"{index:03d}.png"
        target.parent.mkdir(exist_ok=True)
        target.write_bytes((folder / f"{index:03d}.png").read_bytes())
    table = import_folders(root, source="site").manifest
    broken = table.iloc[0].copy()
    broken["path"], broken["image_id"] = str(folder / "broken.png"), "broken"
    broken["sha256"] = hashlib.sha256((folder / "broken.png").read_bytes()).hexdigest()
    table = pd.concat([table, broken.to_frame().T], ignore_index=True)
    cv2.imwrite(str(root / "covid" / "005.png"), xray_pixels(500, 280))
    table.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def test_ray_prepares_the_cache_the_local_engine_does(local_ray, manifest, tmp_path, capsys, monkeypatch):
    """Lines, exit code, failures.csv and every cached pixel (cropped to the lungs by the segmenter), written by
    Ray as shards that the cache reads unchanged; a rerun asks Ray for nothing."""
    from covidxr.data import load_manifest
    from covidxr.data.cache import PixelCache
    from covidxr.data.preprocess import Preprocessing
    from covidxr.lungs import preprocessor

    outputs = {}
    for name, options in (("local", []), ("ray", ["--engine", "ray"])):
        code = main(["prepare", str(manifest), "--size", "64", "--set", "lungs=crop", "-o", str(tmp_path / name),
                     *options])
        outputs[name] = code, capsys.readouterr().out.replace(str(tmp_path / name), "CACHE")
    assert outputs["ray"] == outputs["local"]
    code, printed = outputs["ray"]
    assert code == 3 and "prepared 9 image(s), reused 0" in printed and "failed   2 image(s)" in printed
    assert "not an image" in printed and "sha256 differs" in printed
    config = preprocessor(Preprocessing(size=64, lungs="crop")).settings
    local, on_ray = (PixelCache(tmp_path / name, config) for name in ("local", "ray"))
    assert on_ray.shard_count > 1 and not (on_ray.folder / "pixels.u8").exists()  # written as shards only
    pd.testing.assert_frame_equal(*(pd.read_csv(cache.folder / "failures.csv") for cache in (on_ray, local)))
    prepared = load_manifest(manifest)
    prepared = prepared[~prepared["sha256"].isin(pd.read_csv(local.folder / "failures.csv")["sha256"])]
    assert len(on_ray) == len(local) == len(prepared) == 9
    assert np.array_equal(on_ray.pixels()[on_ray.slots(prepared["sha256"])],
                          local.pixels()[local.slots(prepared["sha256"])])
    columns = ["sha256", "width", "height", "top", "bottom", "left", "right"]
    pd.testing.assert_frame_equal(on_ray.index[columns].sort_values("sha256").reset_index(drop=True),
                                  local.index[columns].sort_values("sha256").reset_index(drop=True))
    runs = record_ray_runs(monkeypatch)
    prepared.to_csv(tmp_path / "prepared.csv", index=False)
    assert main(["prepare", str(tmp_path / "prepared.csv"), "--size", "64", "--set", "lungs=crop", "-o",
                 str(tmp_path / "ray"), "--engine", "ray"]) == 0
    assert "prepared 0 image(s), reused 9" in capsys.readouterr().out and runs == []


def test_ray_predicts_a_manifest_as_the_local_engine_does(local_ray, folder, tmp_path, capsys):
    """A CSV (local) and a Parquet (Ray) manifest of the same rows, in their own order, an unreadable file and an
    input the check refuses among them; a manifest without a path column is a usage error."""
    names = ["black.png", "012.png", "broken.png", "003.png", "007.png", "001.png", "030.png", "black.png"]
    table = pd.DataFrame({"path": [str(folder / name) for name in names], "label": "unknown"})
    table.to_csv(tmp_path / "rows.csv", index=False)
    table.to_parquet(tmp_path / "rows.parquet", index=False)
    local_code, local = predict_json(capsys, tmp_path / "rows.csv")
    ray_code, on_ray = predict_json(capsys, tmp_path / "rows.parquet", "--engine", "ray")
    assert local_code == ray_code == 3
    assert [row["path"] for row in on_ray] == table["path"].tolist()
    assert_same_predictions(local, on_ray)
    assert [row["status"] for row in on_ray].count("error") == 1
    assert [row["input_check"]["status"] for row in on_ray].count("refused") >= 2
    table.drop(columns="path").to_csv(tmp_path / "no-path.csv", index=False)
    for options in ([], ["--engine", "ray"]):
        assert main(["predict", str(tmp_path / "no-path.csv"), *options]) == 2
        error = capsys.readouterr().err
        assert "no-path.csv" in error and "'path' column" in error and "label" in error


def assert_close(mine, theirs, path: str = "") -> None:
    """Equal JSON values, numbers to 1e-5."""
    if isinstance(mine, dict):
        assert isinstance(theirs, dict) and theirs.keys() == mine.keys(), path
        for key in mine:
            assert_close(mine[key], theirs[key], f"{path}.{key}")
    elif isinstance(mine, list):
        assert isinstance(theirs, list) and len(theirs) == len(mine), path
        for index, (a, b) in enumerate(zip(mine, theirs)):
            assert_close(a, b, f"{path}[{index}]")
    elif isinstance(mine, float) and not isinstance(mine, bool):
        assert theirs == pytest.approx(mine, abs=1e-5), path
    else:
        assert theirs == mine, path


def test_ray_audits_as_the_local_engine_does(local_ray, trained_run, training_manifest, tmp_path, monkeypatch):
    """On 12 rows of the run's data: the audit's figures (AUCs, CIs, verdicts), and each image's occlusion scores
    and embedding to 1e-5; a rerun of the Ray pass reads the parts it kept (Ray is not asked again)."""
    from covidxr.data import load_manifest
    from covidxr.data.cache import PixelCache
    from covidxr.engines import engine
    from covidxr.evaluation.audit import audit
    from covidxr.lungs import shipped_segmenter
    from covidxr.metrics import PatientBootstrap
    from covidxr.models.loading import load_run

    run, cache = trained_run
    rows = load_manifest(training_manifest).iloc[::6].reset_index(drop=True)
    rows.to_csv(tmp_path / "some.csv", index=False)
    results, passes = {}, {}
    for name in ("local", "ray"):
        work = engine(name)
        occlusion = work.occlusion
        monkeypatch.setattr(work, "occlusion", lambda *args, name=name, occlusion=occlusion: passes.setdefault(
            name, occlusion(*args)))
        results[name] = audit(run, tmp_path / "some.csv", cache, PatientBootstrap(resamples=20), engine=work)
    assert_close(results["local"], results["ray"])
    assert results["ray"]["n_images"] == 12
    for key in ("scores", "lungs_hidden", "lungs_only", "borders_only", "embeddings", "lung_shares"):
        assert np.allclose(getattr(passes["ray"], key), getattr(passes["local"], key), rtol=0, atol=1e-5), key
    assert passes["ray"].fallbacks == passes["local"].fallbacks
    runs = record_ray_runs(monkeypatch)
    model = load_run(run)
    kept = engine("ray").occlusion(model, rows, PixelCache(cache, model.preprocessing), shipped_segmenter())
    assert runs == [] and np.array_equal(kept.embeddings, passes["ray"].embeddings)
