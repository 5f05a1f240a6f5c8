"""torchxrayvision backbones by name, from weight files the tests write in that package's own formats (a
pickled DenseNet module, a ResNet state dict) into a temporary cache folder: never downloaded."""

import pytest
import torch
from safetensors.torch import save_file

from conftest import import_or_required_under_ci
from covidxr.config import ModelSpec
from covidxr.errors import UsageError
from covidxr.models import xrv
from covidxr.models.classifier import create_model, pretrained_provenance
from covidxr.models.pretrained import WeightsConversionError
from covidxr.models.weights import WeightsUnavailable

xrv_package = import_or_required_under_ci("torchxrayvision", "pip install 'covidxr[xrv]'; the dev extra installs it")


@pytest.fixture
def xrv_cache(tmp_path, monkeypatch):
    """torchxrayvision's cache folder redirected to an empty temporary one."""
    folder = tmp_path / "xrv-cache"
    folder.mkdir()
    monkeypatch.setattr(xrv_package.utils, "get_cache_dir", lambda: str(folder) + "/")
    return folder


def _cache_name(weights: str) -> str:
    return xrv_package.models.model_urls[weights]["weights_url"].rsplit("/", 1)[-1]


def test_xrv_densenet_from_its_cache_as_a_pickled_module(xrv_cache):
    torch.manual_seed(1)
    reference = xrv_package.models.DenseNet(weights=None)
    torch.save(reference, xrv_cache / _cache_name("densenet121-res224-all"))  # the package's own format
    model, _ = create_model(ModelSpec(name="xrv-densenet121-res224-all"), 2, 64)
    assert torch.equal(model.backbone.features.denseblock3.denselayer5.conv1.weight,
                       reference.features.denseblock3.denselayer5.conv1.weight)
    reference.eval(), model.eval()
    pixels = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    scaled = (pixels.float() / 255 * 2 - 1) * 1024  # torchxrayvision's normalize
    with torch.no_grad():
        assert torch.allclose(model.features(pixels).mean((2, 3)), reference.features2(scaled), rtol=1e-4, atol=1e-3)
    provenance = pretrained_provenance(ModelSpec(name="xrv-densenet121-res224-all"))
    assert provenance["source"] == "torchxrayvision" and provenance["file"] == _cache_name("densenet121-res224-all")


def test_xrv_resnet_from_a_state_dict_given_as_model_weights(tmp_path, xrv_cache):
    import torchvision

    reference = torchvision.models.resnet50(num_classes=18, weights=None)
    reference.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    torch.save(reference.state_dict(), tmp_path / "resnet50.pt")
    spec = ModelSpec(name="xrv-resnet50-res512-all", weights=tmp_path / "resnet50.pt")
    model, report = create_model(spec, 2, 64)
    assert report.loaded == len(model.backbone.state_dict())
    assert torch.equal(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    assert model.mean.flatten().tolist() == [0.5] and model.std.flatten().tolist() == [1 / 2048]
    assert pretrained_provenance(spec)["source"] == "file"


def test_xrv_offline_and_uncached_says_what_to_do(xrv_cache):
    with pytest.raises(WeightsUnavailable) as error:
        create_model(ModelSpec(name="xrv-densenet121-res224-all"), 2, 64)
    message = str(error.value)
    assert _cache_name("densenet121-res224-all") in message and str(xrv_cache) in message
    assert "model.weights=FILE" in message and "efficientnet_lite0" in message
    with pytest.raises(UsageError, match="no weights 'densenet121-res224-everything'"):
        create_model(ModelSpec(name="xrv-densenet121-res224-everything"), 2, 64)
    with pytest.raises(UsageError, match="densenet121, resnet50"):
        create_model(ModelSpec(name="xrv-vit-res224-all"), 2, 64)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_xrv_files_naming_other_classes_are_refused(tmp_path, capsys):
    torch.save({"features.conv0.weight": torch.zeros(64, 1, 7, 7), "trap": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsConversionError, match="refused to unpickle.*builtins.print"):
        xrv.read_xrv_file(tmp_path / "evil.pt")
    assert "must never run" not in capsys.readouterr().out
    save_file({"features.conv0.weight": torch.zeros(64, 1, 7, 7)}, str(tmp_path / "partial.safetensors"))
    model, report = create_model(ModelSpec(name="xrv-densenet121-res224-all",
                                           weights=tmp_path / "partial.safetensors"), 2, 64)
    assert report.loaded == 1 and torch.count_nonzero(model.backbone.features.conv0.weight) == 0
