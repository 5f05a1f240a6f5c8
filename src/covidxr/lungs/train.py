"""Train the lung segmenter on the hand-drawn V7 Labs outlines of Cohen's images (plain PyTorch loop).

    python -m covidxr.lungs.train --data DATA -o out/lung-model --ship src/covidxr/shipped/lungs
    python -m covidxr.lungs.train --data DATA -o out/lung-student --network tiny --size 128 \
        --distil-from out/lung-teacher --ship src/covidxr/shipped/lungs     # distil a small, fast segmenter

DATA is the data folder of the README's *Data* section (Cohen's collection, the V7 Labs outlines and, for
distillation, the RSNA normals).

Images are split by patient (the project's split: units of patients and duplicate groups, 70/15/15,
seeded); train images are augmented (affine, brightness, contrast, gamma; never flipped: the heart is on
one side); the loss is Dice + BCE; the epoch with the best validation Dice is kept. Each epoch ends with a
checkpoint (`OUT/checkpoint.pt`): run the same command again to continue an interrupted training. The model folder gets
`model.safetensors` (float32), `model.json`, `split.csv` (which image went where) and `metrics.csv`;
`--ship DIR` then writes the packaged form: float16 weights, their ONNX graph (parity-checked), model.json
and split.csv (file name, sha256, patient and split of each annotated image).
Deterministic for a seed and a thread count on one machine (seeded shuffles and augmentation).

Distillation (`--distil-from TEACHER`): the teacher segmenter's lung probabilities, at its own input size,
of every frontal image of both sources except those of the validation and test patients (Cohen's and the
RSNA normals, which covers framings the COVID-only outlines do not) are the targets of the student, beside
the hand-drawn outlines of the training patients; they are computed once and cached in
`OUT/pseudo-labels-<teacher hash>.npz`. The epoch is still chosen on the validation patients' outlines.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import segmentation_models_pytorch as smp
import torch
from torch.nn import functional
from torchvision import tv_tensors
from torchvision.transforms import v2

from covidxr.commandline import option, out_option
from covidxr.data.dedup import duplicate_groups
from covidxr.data.imageio import read_grayscale
from covidxr.data.manifest import save_manifest
from covidxr.data.sources.cohen import import_cohen
from covidxr.data.sources.csvtable import import_csv
from covidxr.data.split import assign_splits
from covidxr.errors import CovidxrError
from covidxr.lungs.annotations import annotation_table
from covidxr.lungs.geometry import SEGMENTER_SIZE, dice_and_iou, letterbox
from covidxr.lungs.model import TINY_UNET, UNET, architecture, build_lung_net, export_onnx, load_lung_net, save_weights
from covidxr.lungs.segment import LungSegmenter
from covidxr.progress import progress_bar, stderr
from covidxr.runs import NOT_FOR_CLINICAL_USE, LungModelContract, file_sha256, read_json, write_json

MODEL_NAMES = {UNET: "covidxr-lungs-unet-lite0", TINY_UNET: "covidxr-lungs-tinyunet"}
NETWORKS = {"unet-lite0": UNET, "tiny": TINY_UNET}
COHEN_FOLDER = "covid-chestxray-dataset"
RSNA_TABLE, RSNA_IMAGES = "rsna-normal-224/normal_xray_dataset.csv", "rsna-normal-224/normal_dataset"
V7_ZIP = "v7labs-covid-19-xray-dataset/annotations/covid-only.zip"
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)
MASK_THRESHOLD = 0.5
ONNX_PARITY_TOLERANCE = 1e-3
SHIPPED_SPLIT_COLUMNS = ["filename", "sha256", "patient_id", "split"]
"""Which Cohen image the segmenter trained, chose its epoch or was tested on (no paths, no pixels)."""


@dataclass(frozen=True)
class TrainingSettings:
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    pretrained: bool = True
    threads: int = 2
    network: str = UNET
    size: int = SEGMENTER_SIZE
    teacher: str | None = None
    """The segmenter folder to distil from (None: the V7 outlines alone)."""


def annotated_split(data_root: str | Path, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    """The Cohen images that have a V7 outline, split by patient unit, with their masks (`mask` column)."""
    imported = import_cohen(Path(data_root) / COHEN_FOLDER)
    table = annotation_table(imported.manifest, Path(data_root) / COHEN_FOLDER, Path(data_root) / V7_ZIP,
                             origins=("v7",))
    rows = imported.manifest[imported.manifest["image_id"].isin(table.masks["image_id"])].copy()
    rows["dup_group"], _ = duplicate_groups(rows)
    rows["label"] = "lungs"
    rows = assign_splits(rows, SPLIT_FRACTIONS, seed=seed).drop(columns=["fold"])
    masks = table.masks.set_index("image_id")["mask"]
    return rows.assign(mask=rows["image_id"].map(masks)), table.lines


def letterboxed_pairs(rows: pd.DataFrame, size: int = SEGMENTER_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct file's image and mask, letterboxed to `size`: (N, size, size) uint8 and float32 (0/1)."""
    images, masks = [], []
    for row in rows.drop_duplicates("sha256").itertuples():
        images.append(letterbox(read_grayscale(row.path), size)[0])
        soft = letterbox(row.mask.astype(np.float32), size)[0]
        masks.append((soft >= 0.5).astype(np.float32))
    return np.stack(images), np.stack(masks)


def teacher_split(rows: pd.DataFrame, teacher: Path) -> pd.DataFrame:
    """The annotated rows with the split the teacher was trained and tested on (its split.csv, by sha256), so
    a student is scored on the same test patients and never trains on them; rows the teacher never saw are
    left out."""
    known = pd.read_csv(teacher / "split.csv", dtype=str, keep_default_na=False).drop_duplicates("sha256")
    split = rows["sha256"].map(known.set_index("sha256")["split"])
    return rows[split.notna()].assign(split=split[split.notna()])


def unlabelled_frontal_images(data_root: str | Path, held_out_patients: set[str]) -> pd.DataFrame:
    """Every frontal image of both shared sources (Cohen's, the RSNA normals), one row per distinct file,
    without those of `held_out_patients` (Cohen patient ids)."""
    data_root = Path(data_root)
    cohen = import_cohen(data_root / COHEN_FOLDER).manifest
    cohen = cohen[~cohen["patient_id"].astype(str).isin(held_out_patients)]
    rsna = import_csv(data_root / RSNA_TABLE, "filename", "finding", root=data_root / RSNA_IMAGES,
                      source="rsna").manifest
    return pd.concat([cohen, rsna], ignore_index=True).drop_duplicates("sha256")[["sha256", "path", "source"]]


def pseudo_labels(files: pd.DataFrame, teacher: LungSegmenter, cache: Path,
                  batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The files (sorted by sha256) letterboxed to the teacher's size and the teacher's lung probability of
    each ((N, size, size) uint8 twice, probability x 255). `cache` keeps every file labelled so far (keyed by
    sha256): only files it lacks are labelled, and added to it."""
    files = files.drop_duplicates("sha256").sort_values("sha256").reset_index(drop=True)
    known = dict(np.load(cache)) if cache.is_file() else {"sha256": np.array([], str),
                                                          "images": np.zeros((0, teacher.size, teacher.size), np.uint8),
                                                          "probabilities": np.zeros((0, teacher.size, teacher.size),
                                                                                    np.uint8)}
    missing = files[~files["sha256"].isin(known["sha256"])]
    if len(missing):
        images, probabilities = [known["images"]], [known["probabilities"]]
        with progress_bar() as bar:
            task = bar.add_task(f"pseudo-labelling with {teacher.name}", total=len(missing))
            for start in range(0, len(missing), batch_size):
                squares = np.stack([letterbox(read_grayscale(path), teacher.size)[0]
                                    for path in missing["path"].iloc[start:start + batch_size]])
                images.append(squares)
                probabilities.append(np.round(teacher.letterboxed_probabilities(squares) * 255).astype(np.uint8))
                bar.advance(task, len(squares))
        known = {"sha256": np.concatenate([known["sha256"], missing["sha256"].to_numpy(str)]),
                 "images": np.concatenate(images), "probabilities": np.concatenate(probabilities)}
        temporary = cache.with_suffix(".tmp.npz")
        np.savez(temporary, **known)
        temporary.replace(cache)
    position = {sha: index for index, sha in enumerate(known["sha256"])}
    chosen = [position[sha] for sha in files["sha256"]]
    return known["images"][chosen], known["probabilities"][chosen]


def resized(squares: np.ndarray, size: int) -> np.ndarray:
    """(N, S, S) squares area-resized to (N, size, size), same dtype."""
    if squares.shape[1] == size:
        return squares
    return np.stack([cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA) for square in squares])


class Augmentation:
    """Affine (rotation, shift, scale, shear) applied to image and mask alike; brightness, contrast and
    gamma to the image only. No flip."""

    def __init__(self) -> None:
        self.geometry = v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.85, 1.2), shear=5)
        self.intensity = v2.ColorJitter(brightness=0.25, contrast=0.25)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        image = self.intensity(image)
        gamma = float(torch.empty(1).uniform_(0.7, 1.4))
        return image.clamp(0, 1) ** gamma, mask


def as_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W) uint8 -> (N, 1, H, W) float in [0, 1]."""
    return torch.from_numpy(images).float().div(255).unsqueeze(1)


def mean_dice(net: torch.nn.Module, images: np.ndarray, masks: np.ndarray, batch_size: int) -> float:
    """Mean per-image Dice at the segmenter's size (for choosing the epoch)."""
    net.eval()
    scores = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            logits = net(as_input(images[start:start + batch_size]).to(memory_format=torch.channels_last))
            predicted = (logits[:, 0] > 0).numpy()
            scores += [dice_and_iou(p, t >= 0.5)[0] for p, t in zip(predicted, masks[start:start + batch_size])]
    return float(np.mean(scores))


def _save_checkpoint(path: Path, state: dict) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)


def train_net(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray], settings: TrainingSettings,
              checkpoint: Path | None = None) -> tuple[torch.nn.Module, dict, pd.DataFrame]:
    """Train from `settings`; the network of the best validation epoch, its provenance, and one row per epoch.

    With `checkpoint`, the whole state (network, optimiser, schedule, random generators, history) is saved
    there after every epoch, and a run finding one continues after its last epoch: an interrupted run ends
    with the weights an uninterrupted one would have."""
    torch.manual_seed(settings.seed)
    torch.set_num_threads(settings.threads)
    net, pretrained = build_lung_net(settings.pretrained, settings.network)
    net = net.to(memory_format=torch.channels_last)
    images, masks = as_input(train[0]), torch.from_numpy(train[1]).unsqueeze(1).float()
    steps = settings.epochs * -(-len(images) // settings.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=steps, pct_start=0.1)
    dice_loss, augment = smp.losses.DiceLoss("binary", from_logits=True), Augmentation()
    shuffle = torch.Generator().manual_seed(settings.seed)
    best, best_state, history, first_epoch = -1.0, None, [], 0
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved["settings"] != json.dumps(asdict(settings)):
            raise CovidxrError(f"{checkpoint} was written with other settings ({saved['settings']}): delete it to "
                               "start again")
        net.load_state_dict(saved["net"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        shuffle.set_state(saved["shuffle"])
        torch.set_rng_state(saved["rng"])
        best, best_state, history = saved["best"], saved["best_state"], json.loads(saved["history"])
        first_epoch = len(history)
        stderr.print(f"continuing from {checkpoint} after epoch {first_epoch}")
    with progress_bar("batch") as bar:
        done = first_epoch * steps // settings.epochs
        task = bar.add_task("training the lung segmenter", total=steps, completed=done)
        for epoch in range(first_epoch, settings.epochs):
            started, losses = time.perf_counter(), []
            net.train()
            for batch in torch.randperm(len(images), generator=shuffle).split(settings.batch_size):
                pairs = [augment(images[i], masks[i]) for i in batch]
                x = torch.stack([p[0] for p in pairs]).contiguous(memory_format=torch.channels_last)
                y = torch.stack([p[1] for p in pairs])
                logits = net(x)
                loss = dice_loss(logits, y) + functional.binary_cross_entropy_with_logits(logits, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                bar.update(task, advance=1, description=f"lung segmenter epoch {epoch + 1}/{settings.epochs} "
                                                        f"loss {np.mean(losses):.3f}")
            val_dice = mean_dice(net, *val, settings.batch_size)
            history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val_dice,
                            "lr": schedule.get_last_lr()[0], "seconds": time.perf_counter() - started})
            stderr.print(f"epoch {epoch + 1}: train loss {np.mean(losses):.4f}, validation Dice {val_dice:.4f}")
            if val_dice > best:
                best, best_state = val_dice, {k: v.detach().clone() for k, v in net.state_dict().items()}
            if checkpoint is not None:
                _save_checkpoint(checkpoint, {
                    "net": net.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                    "shuffle": shuffle.get_state(), "rng": torch.get_rng_state(), "best": best,
                    "best_state": best_state, "history": json.dumps(history),
                    "settings": json.dumps(asdict(settings))})
    net.load_state_dict(best_state)
    return net.eval(), pretrained, pd.DataFrame(history)


def make_lung_model(data_root: str | Path, out: str | Path, settings: TrainingSettings = TrainingSettings()) -> Path:
    """Train the segmenter on the shared data's V7 outlines and write its model folder `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, lines = annotated_split(data_root, settings.seed)
    for line in lines:
        stderr.print(line)
    if settings.teacher is not None:
        rows = teacher_split(rows, Path(settings.teacher))
    parts = {split: letterboxed_pairs(rows[rows["split"] == split], settings.size) for split in ("train", "val")}
    distilled = None
    if settings.teacher is not None:
        teacher = LungSegmenter(settings.teacher)
        held_out = set(rows.loc[rows["split"] != "train", "patient_id"].astype(str))
        files = unlabelled_frontal_images(data_root, held_out)
        files = files[~files["sha256"].isin(rows.loc[rows["split"] != "train", "sha256"])]
        images, probabilities = pseudo_labels(files, teacher, out / f"pseudo-labels-{teacher.weights_sha256[:12]}.npz")
        distilled = {"teacher": teacher.identity(), "teacher_input_size": teacher.size, "images": len(images),
                     "by_source": {str(k): int(v) for k, v in files["source"].value_counts().items()},
                     "excluded": "the validation and test patients' images"}
        parts["train"] = (np.concatenate([parts["train"][0], resized(images, settings.size)]),
                          np.concatenate([parts["train"][1],
                                          resized(probabilities, settings.size).astype(np.float32) / 255]))
    net, pretrained, history = train_net(parts["train"], parts["val"], settings, out / "checkpoint.pt")
    save_weights(net, out / "model.safetensors")
    save_manifest(rows.drop(columns=["mask"]), out / "split.csv")
    history.to_csv(out / "metrics.csv", index=False)
    write_json(out / "model.json", lung_model_json(rows, pretrained, settings, file_sha256(out / "model.safetensors"),
                                                   distilled))
    return out


def lung_model_json(rows: pd.DataFrame, pretrained: dict, settings: TrainingSettings, weights_sha256: str,
                    distilled: dict | None = None) -> dict:
    counts = {split: {"images": int(part["sha256"].nunique()), "patients": int(part["patient_id"].nunique())}
              for split, part in rows.groupby("split")}
    name = MODEL_NAMES[settings.network] + ("" if settings.size == SEGMENTER_SIZE else f"-{settings.size}")
    data = {"outlines": "V7 Labs covid-19-xray-dataset, hand-drawn Lung polygons (COVID-19 images only)",
            "images": "Cohen covid-chestxray-dataset", "split": "patient units 70/15/15", "counts": counts}
    if distilled is not None:
        data["pseudo_labels"] = distilled
    return LungModelContract(**{
        "name": name, "task": "lung segmentation",
        "architecture": architecture(settings.network),
        "input": {"size": settings.size, "fit": "letterbox (long side to size, centred, black padding)",
                  "scale": "pixel / 255", "channels": 1},
        "output": "lung logits; lungs where sigmoid >= threshold",
        "threshold": MASK_THRESHOLD, "weights_sha256": weights_sha256, "pretrained": pretrained,
        "data": data, "training": asdict(settings), "intended_use": NOT_FOR_CLINICAL_USE,
    }).content


def ship(model_dir: str | Path, target: str | Path) -> Path:
    """The package's form of a trained segmenter in `target`: float16 `model.safetensors`, `model.onnx`
    (float32 graph of those weights, its metadata naming their hash) and `model.json` with that hash."""
    import onnxruntime

    model_dir, target = Path(model_dir), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    record = read_json(model_dir / "model.json")
    save_weights(load_lung_net(model_dir / "model.safetensors", record["architecture"]), target / "model.safetensors",
                 half=True)
    net = load_lung_net(target / "model.safetensors", record["architecture"])
    weights_sha256 = file_sha256(target / "model.safetensors")
    contract = {**record, "weights_sha256": weights_sha256,
                "weights_dtype": "float16",
                "onnx": "model.onnx: the same float16 weights, cast to float32 inside the graph"}
    export_onnx(net, target / "model.onnx", contract["input"]["size"], {"weights_sha256": weights_sha256})
    example = torch.rand(2, 1, contract["input"]["size"], contract["input"]["size"],
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = net(example).numpy()
    session = onnxruntime.InferenceSession(str(target / "model.onnx"), providers=["CPUExecutionProvider"])
    difference = float(np.abs(session.run(None, {"image": example.numpy()})[0] - expected).max())
    if difference > ONNX_PARITY_TOLERANCE:
        raise CovidxrError(f"ONNX parity check failed: max |logit difference| {difference:.2e}")
    write_json(target / "model.json", {**contract, "onnx_parity_max_logit_difference": difference})
    split = pd.read_csv(model_dir / "split.csv", dtype=str, keep_default_na=False)
    split.assign(filename=split["path"].map(lambda p: Path(p).name))[SHIPPED_SPLIT_COLUMNS].to_csv(
        target / "split.csv", index=False)
    for path in target.iterdir():
        path.chmod(0o644)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[
        option("--data", required=True, help="folder holding covid-chestxray-dataset/ and v7labs-.../"),
        out_option(help="model folder to write"),
        option("--epochs", type=int, default=TrainingSettings.epochs),
        option("--seed", type=int, default=TrainingSettings.seed),
        option("--no-pretrained", action="store_true", help="encoder from random weights"),
        option("--network", choices=sorted(NETWORKS), default="unet-lite0",
               help="unet-lite0: smp U-Net, EfficientNet-Lite0 encoder; tiny: a small plain U-Net"),
        option("--size", type=int, default=SEGMENTER_SIZE, help="input size in pixels (a multiple of 32)"),
        option("--batch-size", type=int, default=TrainingSettings.batch_size),
        option("--learning-rate", type=float, default=TrainingSettings.learning_rate),
        option("--distil-from", metavar="TEACHER",
               help="segmenter folder whose masks of every image of both sources are extra targets"),
        option("--ship", type=Path, metavar="DIR", help="also write the packaged form into DIR"),
        option("--ship-only", action="store_true", help="package an already trained OUT (no training)")])
    args = parser.parse_args(argv)
    if args.size % 32:
        parser.error(f"--size {args.size}: must be a multiple of 32 (the networks halve it five times)")
    settings = TrainingSettings(epochs=args.epochs, seed=args.seed, pretrained=not args.no_pretrained,
                                batch_size=args.batch_size, learning_rate=args.learning_rate,
                                network=NETWORKS[args.network], size=args.size, teacher=args.distil_from)
    if not args.ship_only:
        stderr.print(f"wrote {make_lung_model(args.data, args.out, settings)}")
    if args.ship or args.ship_only:
        stderr.print(f"shipped {ship(args.out, args.ship or Path(args.out) / 'shipped')}")


if __name__ == "__main__":
    main()
