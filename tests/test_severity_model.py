"""Severity models: ridge with grouped inner cross-validation, repeated out-of-fold figures with patient
bootstrap intervals, the severity head (NumPy only) and its ONNX embedding, Grad-CAM of a score."""

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import ValidationError
from sklearn.linear_model import Ridge
from sklearn.preprocessing import StandardScaler

from conftest import lesion_image
from covidxr.config import ModelSpec
from covidxr.errors import CovidxrError
from covidxr.evaluation.severity import (
    fit_head,
    fit_ridge,
    mean_fitter,
    out_of_fold,
    ridge_path,
    severity_figures,
)
from covidxr.metrics import PatientBootstrap
from covidxr.models.classifier import create_model
from covidxr.runs import RunDir
from covidxr.runs.severity import (
    SeverityHead,
    read_severity_head,
    severity_from_embedding,
    severity_scores,
    write_severity_head,
)

FIGURES = {name: {"mae": 1.0, "mae_ci": [0.8, 1.2], "pearson_r": 0.7, "pearson_r_ci": [0.5, 0.8]}
           for name in ("extent", "opacity")}


def linear_data(rows: int = 60, columns: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(rows, columns)) * rng.uniform(0.5, 3, columns) + 2
    targets = np.stack([features[:, :3].sum(axis=1) * 0.1 + 3, features[:, 3] * 0.2 + 2.5], axis=1)
    return features, np.clip(targets, 0, [8, 6]), np.arange(rows) // 2


def head_of(size: int = 4, sha: str = "abc") -> SeverityHead:
    score = {"maximum": 8.0, "coefficients": [1.0] + [0.0] * (size - 1), "intercept": 1.0, "alpha": 1.0,
             "mae": 1.2, "mae_ci": (1.0, 1.4)}
    return SeverityHead(feature="test", embedding_size=size, weights_sha256=sha, preprocessing="128px-x", extent=score,
                        opacity={**score, "maximum": 6.0, "coefficients": [0.0, 2.0] + [0.0] * (size - 2),
                                 "mae": 0.9, "mae_ci": (0.7, 1.1)},
                        evaluation={"n_images": 10}, provenance={"raters": "3"})


def test_ridge_path_equals_scikit_learn_ridge_on_standardised_features():
    features, targets, _ = linear_data()
    linear = ridge_path(features, targets, [3.0])[0]
    scaled = StandardScaler().fit_transform(features)
    expected = Ridge(alpha=3.0).fit(scaled, targets).predict(scaled)
    assert np.abs(linear(features) - expected).max() < 1e-9


def test_fit_ridge_recovers_a_linear_relation_and_picks_a_strong_penalty_for_noise():
    features, targets, units = linear_data(rows=80)
    linear = fit_ridge(features, targets, units)
    assert np.abs(linear(features) - targets).mean() < 0.1
    noise = np.random.default_rng(1).normal(size=(80, 2))
    assert (fit_ridge(features, noise, units).alphas >= 1000).all()


def test_out_of_fold_figures_of_a_perfect_model_and_of_the_mean():
    features, targets, units = linear_data(rows=40)
    folds = np.stack([np.arange(40) // 2 % 4, (np.arange(40) // 2 + 1) % 4])
    oracle = out_of_fold(targets, targets, units, folds, lambda x, y, u: (lambda rows: rows))
    figures = severity_figures(oracle, targets, pd.Series(units), PatientBootstrap(resamples=50))
    assert figures["extent"]["mae"] == 0 and figures["extent"]["mae_ci"] == [0.0, 0.0]
    assert figures["opacity"]["pearson_r"] == pytest.approx(1.0)
    means = out_of_fold(features, targets, units, folds, mean_fitter)
    for repeat, assignment in zip(means, folds):
        for fold in range(4):
            held_out = assignment == fold
            assert np.allclose(repeat[held_out], targets[~held_out].mean(axis=0))
    mean_figures = severity_figures(means, targets, pd.Series(units), PatientBootstrap(resamples=50))
    low, high = mean_figures["extent"]["mae_ci"]
    assert low < mean_figures["extent"]["mae"] < high


def test_out_of_fold_clips_to_each_score_range():
    targets = np.array([[1.0, 1.0]] * 4)
    folds = np.array([[0, 0, 1, 1]])
    predicted = out_of_fold(targets, targets, np.arange(4), folds, lambda x, y, u: (lambda rows: rows * 20 - 30))
    assert predicted.max(axis=(0, 1)).tolist() == [0.0, 0.0]
    predicted = out_of_fold(targets, targets, np.arange(4), folds, lambda x, y, u: (lambda rows: rows * 20))
    assert predicted.max(axis=(0, 1)).tolist() == [8.0, 6.0]


def test_severity_from_embedding_applies_the_clipped_linear_maps_and_states_the_mae():
    head = head_of()
    assert severity_from_embedding(np.array([2.0, 1.5, 9.0, 9.0]), head) == {
        "extent": 3.0, "opacity": 4.0, "mae": {"extent": 1.2, "opacity": 0.9}}
    assert severity_from_embedding(np.array([20.0, 5.0, 0, 0]), head)["extent"] == 8.0
    assert severity_scores(np.array([[-5.0, -5.0, 0, 0]]), head).tolist() == [[0.0, 0.0]]
    with pytest.raises(CovidxrError, match="reads \\(images, 4\\) pooled embeddings"):
        severity_from_embedding(np.zeros(5), head)
    with pytest.raises(CovidxrError, match="expected one image's"):
        severity_from_embedding(np.zeros((2, 4)), head)
    with pytest.raises(CovidxrError, match="NaN"):
        severity_from_embedding(np.array([np.nan, 0, 0, 0]), head)


def test_a_head_with_the_wrong_number_of_coefficients_is_refused():
    with pytest.raises(ValidationError, match="extent has 4 coefficients for an embedding of 5"):
        SeverityHead.model_validate({**head_of().model_dump(), "embedding_size": 5})


def test_read_severity_head_only_for_the_model_it_was_fitted_on(tmp_path, caplog):
    rundir = RunDir(tmp_path)
    assert read_severity_head(rundir, "abc") is None
    write_severity_head(rundir, head_of(sha="abc"))
    assert read_severity_head(rundir, "abc") == head_of(sha="abc")
    assert read_severity_head(rundir, "other") is None
    assert "another classifier's embedding" in caplog.text
    (tmp_path / "severity.json").write_text('{"feature": "x"}')
    with pytest.raises(CovidxrError, match="severity.json: not a severity head"):
        read_severity_head(rundir, "abc")


def test_fit_head_on_every_row_predicts_what_the_ridge_does():
    features, targets, units = linear_data()
    head = fit_head(features, targets, units, FIGURES, feature="test features", weights_sha256="sha",
                    preprocessing="128px-x", evaluation={"n_images": 60}, provenance={"raters": "3"})
    expected = np.clip(fit_ridge(features, targets, units)(features[:1]), 0, [8, 6])[0]
    result = severity_from_embedding(features[0], head)
    assert [result["extent"], result["opacity"]] == pytest.approx(expected.tolist(), abs=0.006)
    assert result["mae"] == {"extent": 1.0, "opacity": 1.0} and head.extent.mae_ci == (0.8, 1.2)
    assert head.opacity.maximum == 6.0 and head.extent.alpha > 0


def tiny_classifier():
    model, _ = create_model(ModelSpec(name="covidxr_cnn"), 2, 32, load_initial_weights=False)
    return model.eval()


def test_onnx_export_offers_the_pooled_embedding_beside_the_logits(tmp_path):
    from covidxr.export import write_onnx
    from covidxr.models.onnx_runtime import OnnxModel

    model = tiny_classifier()
    pixels = np.stack([lesion_image(seed, covid=True, size=32) for seed in range(3)])[:, None].astype(np.float32)
    onnx_model = OnnxModel(write_onnx(model, 32, tmp_path / "model.onnx"))
    logits, embedding = onnx_model.outputs(pixels)
    with torch.no_grad():
        assert np.abs(logits - model(torch.from_numpy(pixels)).numpy()).max() < 1e-4
        assert np.abs(embedding - model.embedding(torch.from_numpy(pixels)).numpy()).max() < 1e-4
    assert np.array_equal(onnx_model.logits(pixels), logits) and onnx_model.has_embedding


def tiny_lite0(size: int = 64):
    model, _ = create_model(ModelSpec(name="efficientnet_lite0"), 2, size, load_initial_weights=False)
    return model.eval()


def stages_head(width: int) -> SeverityHead:
    rng = np.random.default_rng(0)
    score = {"maximum": 100.0, "intercept": 0.5, "alpha": 1.0, "mae": 1.0, "mae_ci": (1.0, 1.0)}
    return SeverityHead(feature="t", embedding_size=width, weights_sha256="s", preprocessing="p",
                        extent={**score, "coefficients": rng.normal(size=width).tolist()},
                        opacity={**score, "coefficients": rng.normal(size=width).tolist()},
                        evaluation={}, provenance={})


def test_pooled_stages_export_to_onnx_and_their_grad_cam_follows_the_score(tmp_path):
    from covidxr.explain.severity import severity_heatmaps, severity_network
    from covidxr.models.classifier import PooledStages
    from covidxr.models.onnx_export import write_features_onnx
    from covidxr.models.onnx_runtime import OnnxModel

    network = PooledStages(tiny_lite0(), (3, 4, 5, 6))
    pixels = np.stack([lesion_image(seed, covid=True, size=64) for seed in range(2)])
    batch = torch.from_numpy(pixels)[:, None].float()
    with torch.no_grad():
        embedding = network(batch).numpy()
    assert embedding.shape == (2, 80 + 112 + 192 + 320)
    assert write_features_onnx(network, 64, tmp_path / "features.onnx", pixels) < 1e-4
    assert np.abs(OnnxModel(tmp_path / "features.onnx").embedding(pixels[:, None]) - embedding).max() < 1e-4
    head = stages_head(embedding.shape[1])
    with torch.no_grad():
        outputs = severity_network(network, head)(batch).numpy()
    coefficients, intercepts, _ = head.weights()
    assert np.allclose(outputs, embedding @ coefficients + intercepts, atol=1e-3)
    maps = severity_heatmaps(network, head, pixels, "opacity")
    assert maps.shape == (2, 64, 64) and 0 <= maps.min() and maps.max() <= 1 and maps.max() > 0
    with pytest.raises(CovidxrError, match="accepted: extent, opacity"):
        severity_heatmaps(network, head, pixels, "size")
    with pytest.raises(CovidxrError, match="need an EfficientNet-style backbone"):
        PooledStages(tiny_classifier(), (3,))


def test_a_head_with_its_own_feature_network_checks_the_file(tmp_path):
    from covidxr.runs import file_sha256
    from covidxr.runs.severity import severity_features_file

    rundir = RunDir(tmp_path)
    assert severity_features_file(rundir, head_of()) is None
    (tmp_path / "features.onnx").write_bytes(b"network")
    head = head_of().model_copy(update={"features_onnx": "features.onnx",
                                        "features_sha256": file_sha256(tmp_path / "features.onnx")})
    assert severity_features_file(rundir, head) == tmp_path / "features.onnx"
    (tmp_path / "features.onnx").write_bytes(b"altered")
    with pytest.raises(CovidxrError, match="was altered"):
        severity_features_file(rundir, head)
    (tmp_path / "features.onnx").unlink()
    with pytest.raises(CovidxrError, match="feature network is missing"):
        severity_features_file(rundir, head)


def test_the_fine_tuned_variant_is_seeded_and_predicts_both_scores():
    from covidxr.evaluation.severity_finetune import finetune_fitter, frozen_outputs

    model = tiny_lite0()
    pixels = np.stack([lesion_image(seed, covid=seed % 2 == 0, size=64) for seed in range(8)])
    features = frozen_outputs(model, pixels)
    targets = np.linspace([0, 0], [8, 6], 8)
    fits = [finetune_fitter(model, seed=3, epochs=2)(features, targets, np.arange(8)) for _ in range(2)]
    first, second = (fit(features) for fit in fits)
    assert first.shape == (8, 2) and np.isfinite(first).all() and np.array_equal(first, second)


def test_the_shipped_severity_head_reads_its_own_onnx_features_beside_the_shipped_classifier():
    from covidxr.evaluation.severity_features import MID_STAGES, imagenet_classifier
    from covidxr.models.classifier import PooledStages
    from covidxr.models.onnx_runtime import OnnxModel
    from covidxr.runs import shipped_dir
    from covidxr.runs.severity import severity_features_file

    shipped = RunDir(shipped_dir())
    contract = shipped.read_contract()
    head = read_severity_head(shipped, contract.weights_sha256)
    assert head is not None and head.preprocessing.startswith(f"{contract.image_size}px-")
    assert OnnxModel(shipped.onnx).has_embedding  # the classifier offers its pooled embedding too
    network = OnnxModel(severity_features_file(shipped, head))
    pixels = np.stack([lesion_image(seed, covid=True, size=contract.image_size) for seed in range(3)])
    embedding = network.embedding(pixels[:, None])
    with torch.no_grad():
        expected = PooledStages(imagenet_classifier(contract.image_size), MID_STAGES)(
            torch.from_numpy(pixels)[:, None].float()).numpy()
    assert np.abs(embedding - expected).max() < 1e-4
    severity = severity_from_embedding(embedding[0], head)
    assert 0 <= severity["extent"] <= 8 and 0 <= severity["opacity"] <= 6
    assert severity["mae"] == {name: round(value, 2) for name, value in head.mae.items()}
    assert head.evaluation["n_patients"] == 56 and head.evaluation["repeats"] == 10
