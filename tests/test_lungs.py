"""Lung annotations, the segmenter's geometry and inference, the lung preprocessing step and `segment`.

A tiny ONNX "segmenter" made here (dark pixels are lung) stands in for the shipped one, so these tests
run in a fraction of a second and know the right answer."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pandas as pd
import pytest
from onnx import TensorProto, helper
from PIL import Image

from conftest import SHARED_DATA, required_under_ci, save_image, shared_data_or_skip
from covidxr.cli import main
from covidxr.data.cache import prepare
from covidxr.data.preprocess import LungModelRef, Preprocessing, Preprocessor, preprocess
from covidxr.data.sources.cohen import import_cohen
from covidxr.errors import CovidxrError, UsageError
from covidxr.lungs import LungSegmenter, preprocessor, shipped_segmenter
from covidxr.lungs.annotations import AnnotationError, annotation_table, darwin_outline, read_coco_boxes
from covidxr.lungs.geometry import (
    dice_and_iou,
    letterbox,
    lung_mask_from_letterbox,
    lung_mask_from_probability,
    rectangle_mask,
    unletterbox,
)
from covidxr.lungs.segment import as_grayscale

SIZE = 64


def two_lungs(height: int = 120, width: int = 100, body: int = 170) -> np.ndarray:
    """A bright 'body' with two dark elliptical 'lungs' (the fake segmenter marks dark pixels)."""
    image = np.full((height, width), body, dtype=np.uint8)
    for centre_x in (0.3, 0.7):
        cv2.ellipse(image, (int(centre_x * width), height // 2), (width // 8, height // 4), 0, 0, 360, 30, -1)
    return image


def write_fake_segmenter(folder: Path, weights_sha256: str = "f" * 64, onnx_sha256: str | None = None) -> Path:
    """A segmenter folder whose ONNX graph says logits = 40 * (0.5 - image): dark is lung."""
    image = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE])
    nodes = [helper.make_node("Sub", ["half", "image"], ["below"]),
             helper.make_node("Mul", ["below", "gain"], ["logits"])]
    constants = [helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
                 helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0])]
    model = helper.make_model(helper.make_graph(nodes, "fake", [image], [logits], constants),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "weights_sha256", onnx_sha256 or weights_sha256
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    (folder / "model.json").write_text(json.dumps({
        "name": "fake-dark-is-lung", "weights_sha256": weights_sha256, "threshold": 0.5, "input": {"size": SIZE},
        "architecture": {"name": "40 * (0.5 - image)"}, "pretrained": {"source": "none"}, "data": {}}))
    return folder


@pytest.fixture
def fake_segmenter(tmp_path) -> LungSegmenter:
    return LungSegmenter(write_fake_segmenter(tmp_path / "segmenter"))


# --- annotations -------------------------------------------------------------------------------------------


def darwin(filename: str, width: int, height: int, lungs: list[list[tuple[float, float]]], ignore=()) -> dict:
    polygon = [{"name": "Lung", "polygon": {"path": [{"x": x, "y": y} for x, y in shape]}} for shape in lungs]
    ignored = [{"name": "Ignore", "polygon": {"path": [{"x": x, "y": y} for x, y in shape]}} for shape in ignore]
    tags = [{"name": "COVID-19", "tag": {}}]
    return {"image": {"width": width, "height": height, "original_filename": filename},
            "annotations": polygon + ignored + tags}


def square(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def test_darwin_polygons_are_rescaled_from_their_frame_to_the_file():
    # drawn on a 200x100 original, the file here is 100x50: every coordinate halves
    outline = darwin_outline(darwin("a.png", 200, 100, [square(20, 20, 80, 80), square(120, 20, 180, 80)],
                                    ignore=[square(0, 0, 10, 10)]), "a.json")
    mask = outline.rasterise(100, 50)
    assert outline.lungs == 2 and mask.shape == (50, 100)
    assert mask[25, 25] and mask[25, 75] and not mask[25, 50] and not mask[2, 2]
    assert abs(int(mask.sum()) - 2 * 30 * 30) <= 2 * 31 * 2  # two 30x30 squares, up to a pixel row per edge


def test_annotation_table_keys_masks_by_manifest_rows(cohen_dir, tmp_path):
    manifest = import_cohen(cohen_dir).manifest
    archive = tmp_path / "v7.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("1.json", json.dumps(darwin("img9.jpg", 192, 192, [square(10, 10, 90, 180)] * 2)))
        handle.writestr("2.json", json.dumps(darwin("img0.jpg", 96, 96, [])))  # a lateral: no polygon
        handle.writestr("3.json", json.dumps(darwin("elsewhere.png", 96, 96, [square(1, 1, 5, 5)])))
    (cohen_dir / "annotations" / "lungVAE-masks").mkdir(parents=True)
    vae = np.zeros((48, 48), np.uint8)
    vae[5:40, 5:20] = vae[5:40, 28:43] = 255
    save_image(vae, cohen_dir / "annotations" / "lungVAE-masks" / "img1_mask.png")
    (cohen_dir / "annotations" / "imageannotation_ai_lung_bounding_boxes.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "img2.jpg", "width": 192, "height": 192},
                   {"id": 2, "file_name": "img4.jpg", "width": 96, "height": 96}],
        "annotations": [{"image_id": 1, "bbox": [0, 0, 96, 192]}, {"image_id": 1, "bbox": [96, 0, 96, 192]},
                        {"image_id": 2, "bbox": [None, None, None, None]}]}))
    table = annotation_table(manifest, cohen_dir, archive)
    v7 = table.of("v7")
    # img9.jpg is listed under two patients: one mask, two manifest rows sharing its sha256
    assert len(v7) == 2 and v7["sha256"].nunique() == 1 and set(v7["image_id"]) <= set(manifest["image_id"])
    assert v7["mask"].iloc[0].shape == (96, 96) and v7["mask"].iloc[0][50, 20]  # rescaled from 192 px
    assert table.of("lungvae")["mask"].iloc[0].shape == (96, 96)  # resized to the file (nearest)
    boxes = table.of("coco-boxes")
    assert len(boxes) == 1 and boxes["mask"].iloc[0].all()
    assert any("1 name no manifest image" in line and "1 draw no lung" in line for line in table.lines)
    assert any(line.startswith("coco-boxes") and "1 draw no lung" in line for line in table.lines)


def test_annotation_errors_name_the_file(tmp_path):
    bad = tmp_path / "v7.zip"
    with zipfile.ZipFile(bad, "w") as handle:
        handle.writestr("broken.json", "{not json")
    manifest = pd.DataFrame(columns=["image_id", "sha256", "path", "width", "height"])
    with pytest.raises(AnnotationError, match="broken.json: not valid JSON"):
        annotation_table(manifest, tmp_path, bad, origins=("v7",))
    (tmp_path / "boxes.json").write_text(json.dumps({"images": []}))
    with pytest.raises(AnnotationError, match="boxes.json: not a COCO annotation file"):
        list(read_coco_boxes(tmp_path / "boxes.json"))
    with pytest.raises(AnnotationError, match="unknown annotation origin"):
        annotation_table(manifest, tmp_path, bad, origins=("hand",))


# --- geometry --------------------------------------------------------------------------------------------


def test_letterbox_round_trip_keeps_the_aspect_ratio():
    image = np.zeros((100, 50), np.float32)
    image[:, 25:] = 1
    square, box = letterbox(image, 64)
    assert square.shape == (64, 64) and (box.inner_height, box.inner_width) == (64, 32) and box.left == 16
    assert not square[:, :16].any()
    back = unletterbox(square, box)
    assert back.shape == (100, 50) and back[:, :20].max() < 0.5 and back[:, 30:].min() > 0.5


def test_plausible_masks_pass_and_failures_fall_back_to_the_rectangle():
    two = (two_lungs() < 100).astype(np.float32)
    good = lung_mask_from_probability(two)
    assert good.lungs == 2 and not good.fallback and not good.warnings and 0.08 < good.share < 0.75
    one = two.copy()
    one[:, 50:] = 0
    failed = lung_mask_from_probability(one)
    assert failed.fallback and failed.lungs == 1 and "one lung found (expected two)" in failed.warnings
    assert np.array_equal(failed.mask, rectangle_mask(120, 100))
    assert lung_mask_from_probability(np.zeros((40, 40))).warnings[0] == "no lung found"
    everything = lung_mask_from_probability(np.ones((40, 40)))
    assert everything.fallback and any("cover 100% of the image" in w for w in everything.warnings)


def test_the_mask_made_at_the_segmenter_size_matches_the_one_made_from_the_full_size_map():
    image = two_lungs(900, 700)
    square, box = letterbox(cv2.GaussianBlur((image < 100).astype(np.float32), (0, 0), 12), 64)
    square[2:5, 2:5] = 1  # a speck the full-size path drops too
    square[box.top + 30, box.left + 14] = 0  # a hole in a lung, filled by both
    full, small = lung_mask_from_probability(unletterbox(square, box)), lung_mask_from_letterbox(square, box)
    assert small.mask.shape == (900, 700) and small.mask.dtype == bool
    assert (small.lungs, small.fallback, small.warnings) == (full.lungs, full.fallback, full.warnings) == (2, False, ())
    assert dice_and_iou(small.mask, full.mask)[0] > 0.995
    empty = lung_mask_from_letterbox(np.zeros((64, 64), np.float32), box)
    assert empty.fallback and empty.mask.shape == (900, 700) and empty.warnings[0] == "no lung found"


# --- inference -------------------------------------------------------------------------------------------


def test_segmenter_masks_dark_lungs_at_the_input_size(fake_segmenter):
    image = two_lungs(150, 90)
    lungs = fake_segmenter.segment(image)
    truth = image < 100
    overlap = (lungs.mask & truth).sum() / truth.sum()
    assert lungs.mask.shape == (150, 90) and lungs.lungs == 2 and overlap > 0.9 and not lungs.fallback
    assert fake_segmenter.backend_name == "onnxruntime"
    assert set(np.unique(lungs.as_uint8())) == {0, 255}
    assert [m.share for m in fake_segmenter.segment_many([image, image], batch_size=1)] == [lungs.share] * 2


def test_as_grayscale_accepts_rgb_and_deep_arrays_and_names_bad_shapes():
    assert as_grayscale(np.zeros((8, 8, 3), np.uint8)).shape == (8, 8)
    assert as_grayscale(np.arange(64, dtype=np.uint16).reshape(8, 8)).max() == 255
    with pytest.raises(ValueError, match=r"got shape \(2, 8, 8\)"):
        as_grayscale(np.zeros((2, 8, 8), np.uint8))


def test_inference_imports_no_torch(tmp_path):
    folder = write_fake_segmenter(tmp_path / "segmenter")
    code = ("import sys, numpy as np; from covidxr.lungs import LungSegmenter; "
            f"s = LungSegmenter({str(folder)!r}); s.segment(np.full((40, 40), 200, np.uint8)); "
            "print(s.backend_name, 'torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["onnxruntime", "False"]


def test_a_missing_model_is_a_usage_error_naming_the_fix(tmp_path):
    with pytest.raises(UsageError, match="make lung-model"):
        LungSegmenter(tmp_path)


# --- preprocessing -----------------------------------------------------------------------------------------


def test_lung_crop_is_the_square_around_both_lungs_and_mask_fills_outside(fake_segmenter):
    image = np.full((200, 300), 170, np.uint8)
    image[60:140, 100:140] = image[60:140, 160:200] = 30  # two 'lungs': box rows 60..140, columns 100..200
    ref = LungModelRef(**fake_segmenter.identity())
    crop = Preprocessing(size=50, borders=(), lungs="crop", lung_margin=0.0, lung_model=ref)
    pixels, _ = preprocess(image, crop, fake_segmenter)
    # the 100-wide box made square (rows 50..150) and resized to 50: lungs span the middle rows and most columns
    assert pixels.shape == (50, 50) and pixels[25, 2:48].min() == 30 and pixels[25, 24] == 170
    assert pixels[2, 25] == 170 and pixels[47, 25] == 170
    masked, _ = preprocess(image, crop.model_copy(update={"lungs": "mask", "lung_fill": 7}), fake_segmenter)
    assert masked[2, 25] == 7 and masked[25, 24] == 7 and masked[25, 10] == 30
    with pytest.raises(UsageError, match="lungs='crop': needs a lung masker"):
        preprocess(image, crop)


def test_cache_key_counts_lung_settings_only_when_the_lung_step_is_on():
    # the key of the settings before the lung step existed (default Preprocessing), unchanged
    assert Preprocessing().key() == "256px-d3b0fa203b"
    assert Preprocessing(lung_margin=0.3).key() == Preprocessing().key()
    crop = Preprocessing(lungs="crop")
    assert crop.key() != Preprocessing().key() != Preprocessing(lungs="mask").key()
    assert crop.model_copy(update={"lung_model": LungModelRef(name="a", weights_sha256="1")}).key() != crop.key()


def test_prepare_with_a_lung_step_needs_the_masker(tmp_path, cohen_dir, fake_segmenter):
    manifest = import_cohen(cohen_dir).manifest
    with pytest.raises(UsageError, match="covidxr.lungs.preprocessor"):
        prepare(manifest, tmp_path / "cache", Preprocessor(Preprocessing(size=32, lungs="crop")))
    config = Preprocessing(size=32, lungs="crop", lung_model=LungModelRef(**fake_segmenter.identity()))
    report = prepare(manifest, tmp_path / "cache", Preprocessor(config, fake_segmenter))
    assert report.prepared == manifest["sha256"].nunique() and report.cache.pixels().shape[1:] == (32, 32)


def test_the_preprocessor_names_the_shipped_segmenter_and_refuses_another():
    assert preprocessor(Preprocessing()) == Preprocessor(Preprocessing(), None)
    named = preprocessor(Preprocessing(lungs="crop"))
    assert named.masker is shipped_segmenter()
    assert named.settings.lung_model.weights_sha256 == named.masker.weights_sha256
    assert preprocessor(named.settings).settings == named.settings
    single = named.on_threads(1)  # what a pool of worker processes runs, one per core
    assert (single.settings, single.masker.folder, single.masker.threads) == (named.settings, named.masker.folder, 1)
    assert Preprocessor(Preprocessing()).on_threads(1) == Preprocessor(Preprocessing())
    other = named.settings.model_copy(update={"lung_model": LungModelRef(name="old", weights_sha256="0" * 64)})
    with pytest.raises(CovidxrError, match="lung segmenter old"):
        preprocessor(other)


def test_image_steps_on_one_thread_keep_their_check_and_settings():
    from covidxr.inputcheck import shipped_input_check
    from covidxr.predict import ImageSteps

    steps = ImageSteps(preprocessor(Preprocessing(lungs="crop")), shipped_input_check())
    single = steps.on_threads(1)  # what predict's worker processes run
    assert single.preprocessor.settings == steps.preprocessor.settings and single.preprocessor.masker.threads == 1
    assert single.checker.model == steps.checker.model and single.checker.segmenter.threads == 1
    assert ImageSteps(Preprocessor(Preprocessing())).on_threads(1).checker is None


# --- the segment command -------------------------------------------------------------------------------------


def test_segment_command_writes_masks_overlays_and_a_table(tmp_path, fake_segmenter, capsys):
    inputs = tmp_path / "in"
    save_image(two_lungs(120, 100), inputs / "a.png")
    save_image(two_lungs(90, 90), inputs / "sub" / "a.jpg")  # the same stem in another folder
    save_image(np.full((50, 50), 200, np.uint8), inputs / "blank.png")  # no lung: fallback, not a failure
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    out = tmp_path / "out"
    code = main(["segment", str(inputs), "-o", str(out), "--overlay", "--model", str(fake_segmenter.folder)])
    assert code == 3
    table = pd.read_csv(out / "segment.csv", keep_default_na=False)
    assert list(table.columns) == ["path", "status", "error", "lung_share", "warnings"]
    rows = table.set_index(table["path"].map(lambda p: Path(p).relative_to(inputs).as_posix()))
    assert rows.loc["broken.png", "status"] == "error" and "cannot decode" in rows.loc["broken.png", "error"]
    assert "no lung found" in rows.loc["blank.png", "warnings"] and rows.loc["blank.png", "status"] == "ok"
    mask = np.asarray(Image.open(out / "a_lungs.png"))
    assert mask.shape == (120, 100) and set(np.unique(mask)) == {0, 255}
    assert np.asarray(Image.open(out / "a-2_lungs.png")).shape == (90, 90)
    assert np.asarray(Image.open(out / "a_overlay.png")).shape == (120, 100, 3)
    assert "a-2_lungs.png" in rows.loc["sub/a.jpg", "warnings"]
    assert "2 segmented" not in capsys.readouterr().out  # 3 of 4 segmented (one with the fallback)


@pytest.mark.shared_data
def test_shared_annotations_and_the_shipped_segmenter_on_held_out_images():
    cohen = shared_data_or_skip() / "covid-chestxray-dataset"
    v7 = SHARED_DATA / "v7labs-covid-19-xray-dataset" / "annotations" / "covid-only.zip"
    if not v7.is_file():
        required_under_ci(f"the shared v7labs annotations at {v7}", "see the shared data's README")
    split = pd.read_csv(shipped_segmenter().folder / "split.csv", dtype=str, keep_default_na=False)
    assert split.groupby("split")["patient_id"].nunique().to_dict().keys() == {"train", "val", "test"}
    rows = split[split["split"] == "test"].drop_duplicates("sha256").head(6)
    paths = [cohen / "images" / name for name in rows["filename"]]
    sizes = [Image.open(path).size for path in paths]
    manifest = rows.assign(image_id=rows["sha256"], path=list(map(str, paths)), width=[w for w, _ in sizes],
                           height=[h for _, h in sizes])
    table = annotation_table(manifest, cohen, v7, origins=("v7",))
    assert len(table.masks) == len(rows)
    for row in table.masks.itertuples():
        predicted = shipped_segmenter().segment(np.asarray(Image.open(row.path).convert("L"))).mask
        dice = 2 * (predicted & row.mask).sum() / (predicted.sum() + row.mask.sum())
        assert dice > 0.85, row.path


def test_segmenter_evaluation_writes_figures_card_and_the_share_table(tmp_path, cohen_dir, normals_csv):
    from covidxr.evaluation.lungs import evaluate_segmenter
    from covidxr.metrics import PatientBootstrap
    from covidxr.runs import LungModelCard

    data = tmp_path / "data"
    data.mkdir()
    (data / "covid-chestxray-dataset").symlink_to(cohen_dir)
    (data / "rsna-normal-224").symlink_to(normals_csv.parent)
    image = two_lungs(96, 96)
    save_image(image, cohen_dir / "images" / "img2.jpg", quality=95)
    ellipses = [cv2.ellipse2Poly((int(x * 96), 48), (12, 24), 0, 0, 360, 5).tolist() for x in (0.3, 0.7)]
    archive = data / "v7labs-covid-19-xray-dataset" / "annotations" / "covid-only.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("2.json", json.dumps(darwin("img2.jpg", 96, 96, ellipses)))
    (cohen_dir / "annotations" / "lungVAE-masks").mkdir(parents=True)
    save_image(((image < 100) * 255).astype(np.uint8), cohen_dir / "annotations" / "lungVAE-masks" / "img3_mask.png")
    (cohen_dir / "annotations" / "imageannotation_ai_lung_bounding_boxes.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "img4.jpg", "width": 96, "height": 96}],
         "annotations": [{"image_id": 1, "bbox": [10, 10, 30, 60]}, {"image_id": 1, "bbox": [56, 10, 30, 60]}]}))
    folder = write_fake_segmenter(tmp_path / "segmenter")
    manifest = import_cohen(cohen_dir).manifest
    held_out = manifest[manifest["path"].str.endswith("img2.jpg")]
    held_out.assign(filename="img2.jpg", split="test")[["filename", "sha256", "patient_id", "split"]].to_csv(
        folder / "split.csv", index=False)
    result = evaluate_segmenter(data, tmp_path / "evaluation", folder, PatientBootstrap(resamples=50))
    assert result.held_out.n_images == 1 and result.held_out.dice > 0.9
    assert result.lungvae.non_covid.n_images == 1 and result.coco_boxes.n_images == 1
    groups = {row.group for row in result.lung_share.by_group}
    assert "rsna / normal" in groups and "cohen / covid" in groups
    speed = result.speed
    assert speed.n_images == 1 and speed.input_size == LungSegmenter(folder).size and "CPU cores" in speed.machine
    assert min(speed.network_ms_batch_1, speed.network_ms_batch_16, speed.segment_ms) > 0
    assert {p.name for p in (tmp_path / "evaluation").iterdir()} >= {
        "lungs-evaluation.json", "lungs-dice.png", "lungs-share.png", "contact-sheet.png", "held-out.csv"}
    card = json.loads((folder / "model_card.json").read_text())
    assert card["evaluation"]["held_out"]["dice"] == result.held_out.dice and card["limitations"]
    assert LungModelCard.parse(card, "model_card.json").evaluation == result
    assert json.loads((tmp_path / "evaluation" / "lungs-evaluation.json").read_text()) == card["evaluation"]


def test_training_is_deterministic_and_continues_from_its_checkpoint(tmp_path, monkeypatch):
    from covidxr.lungs import train

    images = np.stack([two_lungs(64, 64, body=150 + 10 * i) for i in range(2)])
    data = (images, (images < 100).astype(np.uint8))
    settings = train.TrainingSettings(epochs=2, batch_size=2, pretrained=False)
    straight, _, history = train.train_net(data, data, settings)
    validations, mean_dice = [], train.mean_dice

    def interrupted(*args):
        validations.append(1)
        if len(validations) == 2:
            raise KeyboardInterrupt
        return mean_dice(*args)
    monkeypatch.setattr(train, "mean_dice", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train.train_net(data, data, settings, tmp_path / "checkpoint.pt")
    monkeypatch.setattr(train, "mean_dice", mean_dice)
    continued, _, again = train.train_net(data, data, settings, tmp_path / "checkpoint.pt")
    assert history["train_loss"].tolist() == again["train_loss"].tolist()
    assert all(torch_equal(a, b) for a, b in zip(straight.state_dict().values(), continued.state_dict().values()))
    with pytest.raises(CovidxrError, match="other settings"):
        train.train_net(data, data, train.TrainingSettings(epochs=3, pretrained=False), tmp_path / "checkpoint.pt")


def test_the_student_network_is_built_from_its_model_json_and_keeps_the_input_size(tmp_path):
    import torch

    from covidxr.lungs.model import TINY_UNET, architecture, load_lung_net, lung_net, save_weights

    net = lung_net(architecture(TINY_UNET)).eval()
    with torch.no_grad():
        assert net(torch.rand(3, 1, 96, 96)).shape == (3, 1, 96, 96)
    save_weights(net, tmp_path / "model.safetensors")
    (tmp_path / "model.json").write_text(json.dumps({"architecture": architecture(TINY_UNET)}))
    loaded, image = load_lung_net(tmp_path / "model.safetensors"), torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        assert torch.allclose(loaded(image), net(image))
    with pytest.raises(CovidxrError, match="unknown lung network 'vgg'"):
        lung_net({"name": "vgg"})


def test_pseudo_labels_are_the_teachers_probabilities_computed_once(tmp_path, fake_segmenter, monkeypatch):
    from covidxr.lungs import train

    paths = [save_image(two_lungs(80 + 20 * i, 100), tmp_path / f"{i}.png") for i in range(3)]
    files = pd.DataFrame({"sha256": ["c", "a", "b"], "path": [str(p) for p in paths], "source": "cohen"})
    images, probabilities = train.pseudo_labels(files, fake_segmenter, tmp_path / "cache.npz", batch_size=2)
    assert images.shape == probabilities.shape == (3, SIZE, SIZE) and probabilities.dtype == np.uint8
    first = letterbox(two_lungs(100, 100), SIZE)[0]  # sha256 "a" (the second file): sorted by hash
    assert np.array_equal(images[0], first)
    assert np.array_equal(probabilities[0] > 127, first < 128)  # dark is lung: p > 0.5 below 127.5
    monkeypatch.setattr(fake_segmenter, "letterboxed_probabilities", lambda squares: pytest.fail("recomputed"))
    cached = train.pseudo_labels(files, fake_segmenter, tmp_path / "cache.npz")
    assert np.array_equal(cached[1], probabilities)
    subset = train.pseudo_labels(files[files["sha256"] != "a"], fake_segmenter, tmp_path / "cache.npz")
    assert np.array_equal(subset[0], images[1:])
    assert train.resized(probabilities, 32).shape == (3, 32, 32)


def test_a_student_keeps_the_teachers_split(tmp_path):
    from covidxr.lungs import train

    pd.DataFrame({"filename": ["a.png", "b.png"], "sha256": ["a", "b"], "patient_id": ["1", "2"],
                  "split": ["test", "train"]}).to_csv(tmp_path / "split.csv", index=False)
    rows = pd.DataFrame({"sha256": ["a", "b", "c"], "patient_id": ["1", "2", "3"], "split": ["train", "test", "val"]})
    kept = train.teacher_split(rows, tmp_path)
    assert kept["sha256"].tolist() == ["a", "b"] and kept["split"].tolist() == ["test", "train"]


def torch_equal(first, second) -> bool:
    return bool((first == second).all())
