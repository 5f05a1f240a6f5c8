"""Mitigations of source shortcuts: harmonisation, equalisation, source x label sampling, the adversary."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import tiny_recipe_overrides, xray_pixels
from covidxr.config import Harmonisation, load_recipe
from covidxr.data.preprocess import Preprocessing, preprocess
from covidxr.errors import UsageError
from covidxr.models.heads import DomainHead, GradientReversal
from covidxr.training.data import augmentation, harmonisation_steps, source_label_weights
from covidxr.training.module import LitClassifier
from covidxr.training.run import train

ALL_HARMONISATION = {"harmonisation.rescale_p": "1", "harmonisation.jpeg_p": "1", "harmonisation.blur_p": "1",
                     "harmonisation.noise_p": "1", "harmonisation.gamma_p": "1"}


def test_harmonisation_is_off_by_default_and_each_step_changes_the_image():
    assert harmonisation_steps(Harmonisation(), 64) == []
    image = torch.tensor(xray_pixels(3, 64)).unsqueeze(0)
    for name in ("rescale", "jpeg", "blur", "noise", "gamma"):
        (step,) = harmonisation_steps(Harmonisation(**{f"{name}_p": 1.0}), 64)
        torch.manual_seed(0)
        out = step(image)
        assert out.shape == image.shape and out.dtype == torch.uint8, name
        assert not torch.equal(out, image), name


def test_jpeg_re_encoding_loses_more_at_lower_quality():
    image = torch.tensor(xray_pixels(4, 64) // 2 + np.random.default_rng(0).integers(0, 60, (64, 64)).astype(np.uint8))
    errors = []
    for quality in (10, 95):
        (step,) = harmonisation_steps(Harmonisation(jpeg_p=1.0, jpeg_quality=(quality, quality)), 64)
        errors.append((step(image[None]).float() - image.float()).abs().mean())
    assert errors[0] > 2 * errors[1] > 0


def test_down_then_up_scaling_removes_fine_detail():
    stripes = torch.zeros(1, 64, 64, dtype=torch.uint8)
    stripes[:, :, ::2] = 255
    (step,) = harmonisation_steps(Harmonisation(rescale_p=1.0, rescale_range=(0.25, 0.25)), 64)
    assert step(stripes).float().std() < 0.2 * stripes.float().std()


def test_harmonisation_settings_are_validated():
    with pytest.raises(UsageError, match="jpeg_quality"):
        load_recipe("default", ["harmonisation.jpeg_quality=90,20"])
    with pytest.raises(UsageError, match="valid: rescale_p"):
        load_recipe("default", ["harmonisation.jpg_p=1"])
    config = load_recipe("default", tiny_recipe_overrides(**{"harmonisation.gamma_p": "0.5"}))
    assert "RandomGamma" in repr(augmentation(config)) and "RandomJpeg" not in repr(augmentation(config))


def test_histogram_equalisation_spreads_grey_levels_and_excludes_clahe():
    dull = (xray_pixels(5, 128) // 4 + 100).astype(np.uint8)
    plain, _ = preprocess(dull, Preprocessing(size=64, borders=()))
    equalised, _ = preprocess(dull, Preprocessing(size=64, borders=(), equalize=True))
    assert np.ptp(equalised) > 2 * np.ptp(plain) and equalised.max() == 255
    with pytest.raises(UsageError, match="alternatives"):
        load_recipe("default", ["preprocessing.equalize=true", "preprocessing.clahe=true"])
    assert Preprocessing().key() != Preprocessing(equalize=True).key()


def test_source_label_sampling_balances_labels_then_sources():
    targets = np.array([1] * 10 + [0] * 5 + [0] * 100)
    sources = np.array(["cohen"] * 15 + ["rsna"] * 100)
    weights = source_label_weights(targets, sources).numpy()
    mass = pd.Series(weights).groupby([targets, sources]).sum()
    assert mass[(1, "cohen")] == pytest.approx(0.5)
    assert mass[(0, "cohen")] == pytest.approx(0.25) and mass[(0, "rsna")] == pytest.approx(0.25)


def test_gradient_reversal_flips_and_scales_the_gradient():
    inputs = torch.randn(4, 3, requires_grad=True)
    GradientReversal.apply(inputs, 0.5).sum().backward()
    assert torch.allclose(inputs.grad, torch.full((4, 3), -0.5))


def test_the_adversary_pushes_the_backbone_against_the_domain_loss():
    torch.manual_seed(0)
    from covidxr.config import ModelSpec
    from covidxr.models.classifier import create_model

    model, _ = create_model(ModelSpec(name="covidxr_cnn"), 2, 32)
    head = DomainHead(model.head[-1].in_features, 2)
    module = LitClassifier(model, 2, 1e-3, 0.0, domain_head=head, adversarial_weight=1.0, adversarial_warmup=False)
    pixels, domains = torch.rand(8, 1, 32, 32) * 255, torch.tensor([0, 1] * 4)
    features = model.features(pixels)
    domain_loss = torch.nn.functional.cross_entropy(head(features, 1.0), domains)
    backbone = [p for p in model.backbone.parameters() if p.requires_grad]
    reversed_grads = torch.autograd.grad(domain_loss, backbone + list(head.parameters()), retain_graph=True)
    plain = torch.autograd.grad(torch.nn.functional.cross_entropy(head.classifier(features.mean(dim=(2, 3))),
                                                                  domains), backbone + list(head.parameters()))
    for got, expected in zip(reversed_grads[:len(backbone)], plain[:len(backbone)]):
        assert torch.allclose(got, -expected, atol=1e-6)
    for got, expected in zip(reversed_grads[len(backbone):], plain[len(backbone):]):
        assert torch.allclose(got, expected, atol=1e-6)
    assert len(module.parameter_groups()[0]["params"]) == len(list(model.parameters())) + len(list(head.parameters()))


def test_adversary_needs_a_trainable_backbone_and_two_domains(tmp_path, training_manifest):
    with pytest.raises(UsageError, match="transfer.mode"):
        load_recipe("default", ["adversarial.weight=1", "transfer.mode=head"])
    single = pd.read_csv(training_manifest, dtype=str, keep_default_na=False)
    single = single[single["source"] == "site-a"]
    single.to_csv(tmp_path / "one-source.csv", index=False)
    config = load_recipe("default", tiny_recipe_overrides(**{"adversarial.weight": "1"}))
    with pytest.raises(UsageError, match="at least two"):
        train(config, tmp_path / "one-source.csv", tmp_path / "run", cache_root=tmp_path / "cache")


def test_a_run_with_every_mitigation_records_them_in_model_json(tmp_path, training_manifest):
    settings = {**ALL_HARMONISATION, "optimisation.class_balance": "source-label", "adversarial.weight": "0.5",
                "preprocessing.equalize": "true", "trainer.max_epochs": "1"}
    run = train(load_recipe("default", tiny_recipe_overrides(**settings)), training_manifest, tmp_path / "run",
                cache_root=tmp_path / "cache")
    contract = json.loads((run / "model.json").read_text())
    assert contract["preprocessing"]["equalize"] is True
    training = contract["training"]
    assert training["class_balance"] == "source-label" and training["adversarial"]["weight"] == 0.5
    assert training["harmonisation"]["jpeg_p"] == 1.0 and training["harmonisation"]["jpeg_quality"] == [20, 90]


def test_a_test_only_manifest_is_not_trained_on(tmp_path, training_manifest):
    external = pd.read_csv(training_manifest, dtype=str, keep_default_na=False).assign(split="test", fold="")
    external.to_csv(tmp_path / "external.csv", index=False)
    with pytest.raises(UsageError, match="test rows only"):
        train(load_recipe("default", tiny_recipe_overrides()), tmp_path / "external.csv", tmp_path / "run",
              cache_root=tmp_path / "cache")
