"""Model creation for every listed backbone, heads, weights loading and conversion, and their errors."""

import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from covidxr.config import ModelSpec, TrainConfig, parse_overrides, with_overrides
from covidxr.errors import CovidxrError, UsageError
from covidxr.models.classifier import create_model
from covidxr.models.heads import create_head, register_head
from covidxr.models.weights import WeightsUnavailable, convert_checkpoint, imagenet_backbone, load_weights
from covidxr.registry import BACKBONES as REGISTERED_BACKBONES
from covidxr.registry import HEADS

BACKBONES = ["resnet18", "resnet50", "vgg16", "vgg19", "densenet121", "mobilenetv2_100", "efficientnet_b0",
             "covidxr_cnn"]


@pytest.mark.parametrize("name", BACKBONES)
def test_every_listed_backbone_classifies_grey_pixels(name):
    model, report = create_model(ModelSpec(name=name), num_classes=2, image_size=32)
    model.eval()
    logits = model(torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8))
    assert logits.shape == (2, 2) and report is None


@pytest.mark.parametrize("name", ["resnet18", "covidxr_cnn"])
def test_three_channel_input_and_three_classes(name):
    model, _ = create_model(ModelSpec(name=name, in_chans=3), num_classes=3, image_size=32)
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_covidxr_cnn_is_a_registered_backbone_and_a_timm_model_by_name():
    assert REGISTERED_BACKBONES.names() == ["covidxr_cnn"]
    assert "covidxr_cnn" in timm.list_models()
    model = timm.create_model("covidxr_cnn", num_classes=2, in_chans=1)
    assert model(torch.zeros(1, 1, 64, 64)).shape == (1, 2)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 5


@pytest.mark.parametrize("head, parameters", [
    ("linear", 512 * 2 + 2), ("pyimagesearch", (512 * 1 * 1) * 64 + 64 + 64 * 2 + 2),
    ("hansen", 512 * 7 * 7 * 2 + 2), ("zivkovic", 512 * 128 + 128 + 128 * 2 + 2),
])
def test_heads_follow_the_write_ups(head, parameters):
    module = create_head(head, channels=512, height=7, width=7, num_classes=2)
    assert module(torch.zeros(3, 512, 7, 7)).shape == (3, 2)
    assert sum(p.numel() for p in module.parameters()) == parameters
    assert HEADS.names() == ["linear", "pyimagesearch", "hansen", "zivkovic"]


def test_a_new_head_is_one_decorated_function_and_a_recipe_can_name_it(monkeypatch):
    monkeypatch.setattr(HEADS, "entries", dict(HEADS.entries))  # registered for this test only

    @register_head("max-pool")
    def max_pool(channels, height, width, num_classes, dropout):
        return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    spec = ModelSpec.model_validate({"name": "covidxr_cnn", "head": "max-pool"})
    model, _ = create_model(spec, num_classes=2, image_size=32)
    assert isinstance(model.head[0], nn.AdaptiveMaxPool2d)
    pixels, labels = torch.randint(0, 256, (4, 1, 32, 32), dtype=torch.uint8), torch.tensor([0, 1, 0, 1])
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.head[-1].weight.detach().clone()
    loss = nn.functional.cross_entropy(model(pixels), labels)
    loss.backward()
    optimiser.step()
    assert torch.isfinite(loss) and not torch.equal(model.head[-1].weight, before)
    assert "max-pool" in HEADS.names()
    with pytest.raises(ValueError, match="head 'max-pool' is already registered"):
        register_head("max-pool")(max_pool)


def test_a_config_checks_a_built_in_head_before_any_model_module_is_imported():
    code = ("import sys; from covidxr.config import ModelSpec; "
            "print(ModelSpec(head='hansen').head, 'covidxr.models.classifier' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["hansen", "False"]


def test_an_unknown_head_in_a_recipe_lists_the_registered_ones():
    with pytest.raises(UsageError, match="^overrides: model.head: unknown head 'mlp'; registered: linear, "
                                         "pyimagesearch, hansen, zivkovic$"):
        with_overrides(TrainConfig(), parse_overrides(["model.head=mlp"]))


def test_unknown_model_and_head_are_usage_errors():
    with pytest.raises(UsageError, match="unknown model 'resnet9000'.*covidxr's own \\(covidxr_cnn\\)"):
        create_model(ModelSpec(name="resnet9000"), 2, 32)
    with pytest.raises(UsageError, match="^unknown head 'transformer'; registered: linear, pyimagesearch"):
        create_head("transformer", 8, 2, 2, 2)
    with pytest.raises(UsageError, match="^pretrained=True: covidxr_cnn has no pretrained weights; accepted: "):
        timm.create_model("covidxr_cnn", pretrained=True)


def test_a_whole_model_file_round_trips(tmp_path):
    first, _ = create_model(ModelSpec(name="resnet18"), 2, 32)
    save_file({k: v.contiguous() for k, v in first.state_dict().items()}, str(tmp_path / "m.safetensors"))
    second, report = create_model(ModelSpec(name="resnet18", weights=tmp_path / "m.safetensors"), 2, 32)
    probe = torch.randint(0, 256, (2, 1, 32, 32)).float()
    assert torch.allclose(first.eval()(probe), second.eval()(probe))
    assert not report.missing and not report.unexpected


def test_backbone_weights_adapt_rgb_conv_and_skip_the_imagenet_classifier(tmp_path):
    imagenet_like = timm.create_model("resnet18", num_classes=1000, in_chans=3)
    save_file({k: v.contiguous() for k, v in imagenet_like.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    model, report = create_model(ModelSpec(name="resnet18", weights=tmp_path / "r18.safetensors"), 2, 32)
    assert report.adapted == ["conv1.weight"]
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    expected = imagenet_like.state_dict()["conv1.weight"].sum(dim=1, keepdim=True)
    assert torch.allclose(model.backbone.conv1.weight, expected)
    assert torch.equal(model.backbone.layer4[1].conv2.weight, imagenet_like.layer4[1].conv2.weight)


def test_weight_file_errors(tmp_path):
    model, _ = create_model(ModelSpec(name="covidxr_cnn"), 2, 32)
    with pytest.raises(UsageError, match="convert"):
        load_weights(model, tmp_path / "w.pth")
    with pytest.raises(UsageError, match="not found"):
        load_weights(model, tmp_path / "absent.safetensors")
    save_file({"something.else": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CovidxrError, match="no tensor matches"):
        load_weights(model, tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CovidxrError, match="not a readable safetensors"):
        load_weights(model, tmp_path / "junk.safetensors")


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_convert_reads_state_dicts_only(tmp_path):
    state = {"module.layer.weight": torch.ones(2, 2), "module.layer.bias": torch.zeros(2)}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    assert convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out.safetensors") == 2
    assert set(load_file(str(tmp_path / "out.safetensors"))) == {"layer.weight", "layer.bias"}
    torch.save({"weights": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CovidxrError, match="refused to unpickle"):
        convert_checkpoint(tmp_path / "evil.pth", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()
    whole = (tmp_path / "ckpt.pth").read_bytes()
    for name, content in (("empty.pth", b""), ("cut.pth", whole[: len(whole) // 2]), ("text.pth", b"not a zip")):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(CovidxrError, match=f"{name}: not a plain tensor checkpoint"):
            convert_checkpoint(tmp_path / name, tmp_path / "out2.safetensors")


def test_convert_command(tmp_path, capsys):
    from covidxr.cli import main

    torch.save({"w": torch.ones(1)}, tmp_path / "a.pth")
    assert main(["weights", "convert", str(tmp_path / "a.pth"), "-o", str(tmp_path / "a.safetensors")]) == 0
    assert main(["weights", "convert", str(tmp_path / "none.pth"), "-o", str(tmp_path / "b.safetensors")]) == 2


def test_imagenet_offline_and_uncached_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as error:
        imagenet_backbone("resnet18", in_chans=1)
    message = str(error.value)
    assert "timm/resnet18.a1_in1k/model.safetensors" in message and str(tmp_path / "hub") in message
    assert "model.weights=FILE.safetensors" in message and "model.pretrained=none" in message


def test_imagenet_weights_come_from_timms_cache_when_present(tmp_path, monkeypatch):
    import huggingface_hub.constants

    reference = timm.create_model("resnet18", num_classes=1000)
    snapshot = tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(snapshot / "model.safetensors"))
    (tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "hub" / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    backbone = imagenet_backbone("resnet18", in_chans=3)
    assert torch.equal(backbone.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
