"""How good is the lung segmenter, and does it draw the same lungs for every source?

    python -m covidxr.evaluation.lungs --data DATA -o out/lung-model/evaluation   # after training

DATA is the data folder of the README's *Data* section; `make lung-model` trains, then runs this.

1. Held-out patients: Dice and IoU of the segmenter's final masks (post-processing and fallback included)
   against the hand-drawn V7 outlines of the test split's images, at each image's own resolution; 95%
   patient-bootstrap intervals of the means.
2. Where no hand-drawn outline exists: agreement with the lungVAE model masks (non-COVID images included)
   and with the COCO lung boxes, on images the segmenter never trained on.
3. The lung share of the image per source and label (Cohen's frontal images, a seeded sample of the RSNA
   normals), as the segmenter draws it: different shares per source would make a new shortcut.
4. A contact sheet of RSNA normals and Cohen non-COVID images with their predicted outlines (pixels of
   the data: written to the output folder, never to the docs).
The results go to OUT/lungs-evaluation.json, the figures beside it, and the model folder's model_card.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from onnxruntime import __version__ as onnxruntime_version

from covidxr.commandline import option, out_option
from covidxr.data.imageio import read_grayscale
from covidxr.data.labels import label_for
from covidxr.data.regions import mask_box
from covidxr.data.sources.cohen import import_cohen
from covidxr.data.sources.csvtable import import_csv
from covidxr.lungs import LungSegmenter
from covidxr.lungs.annotations import annotation_table
from covidxr.lungs.geometry import dice_and_iou, letterbox, outline_overlay
from covidxr.metrics import PatientBootstrap
from covidxr.progress import progress_bar, stderr
from covidxr.runs import NOT_FOR_CLINICAL_USE, LungEvaluation, LungModelCard, LungModelContract, read_json, write_json
from covidxr.runs.cards import SegmenterSpeed

COHEN = "covid-chestxray-dataset"
V7_ZIP = "v7labs-covid-19-xray-dataset/annotations/covid-only.zip"
RSNA_TABLE, RSNA_IMAGES = "rsna-normal-224/normal_xray_dataset.csv", "rsna-normal-224/normal_dataset"
RSNA_SAMPLE = 1000
SHEET_PER_GROUP = 8
TIMED_RUNS = 20
SHARE_DIFFERENCE = 0.05
"""Median lung shares of two groups further apart than this are reported as a possible shortcut."""


def box_iou(first: np.ndarray, second: np.ndarray) -> float:
    """IoU of the bounding boxes of two bool masks."""
    (t1, b1, l1, r1), (t2, b2, l2, r2) = mask_box(first), mask_box(second)
    inter = max(0, min(b1, b2) - max(t1, t2)) * max(0, min(r1, r2) - max(l1, l2))
    union = (b1 - t1) * (r1 - l1) + (b2 - t2) * (r2 - l2) - inter
    return float(inter / union) if union else 0.0


@dataclass
class Scored:
    """Per-image agreement of the segmenter with one kind of annotation."""

    rows: pd.DataFrame
    """image_id, sha256, path, patient_id, finding, dice, iou, box_iou, share, fallback"""

    def summary(self, bootstrap: PatientBootstrap, keys: tuple[str, ...] = ("dice", "iou")) -> dict:
        rows = self.rows.reset_index(drop=True)
        values = {key: rows[key].to_numpy() for key in keys}
        intervals = bootstrap.intervals(lambda index: {k: float(v[index].mean()) for k, v in values.items()},
                                        rows["patient_id"]) if len(rows) else {}
        result = {"n_images": int(len(rows)), "n_patients": int(rows["patient_id"].nunique()),
                  "fallbacks": int(rows["fallback"].sum())}
        for key in keys:
            result[key] = float(values[key].mean()) if len(rows) else None
            result[f"{key}_ci"] = intervals.get(key)
            result[f"{key}_median"] = float(np.median(values[key])) if len(rows) else None
        return result


def score_against(segmenter: LungSegmenter, table: pd.DataFrame, manifest: pd.DataFrame, description: str) -> Scored:
    """The segmenter's mask of each annotated file against its annotation."""
    files = table.drop_duplicates("sha256").merge(manifest[["image_id", "patient_id", "finding"]], on="image_id")
    rows = []
    with progress_bar() as bar:
        task = bar.add_task(description, total=len(files))
        for row in files.itertuples():
            lungs = segmenter.segment(read_grayscale(row.path))
            dice, iou = dice_and_iou(lungs.mask, row.mask)
            rows.append({"image_id": row.image_id, "sha256": row.sha256, "path": row.path,
                         "patient_id": row.patient_id, "finding": row.finding, "dice": dice, "iou": iou,
                         "box_iou": box_iou(lungs.mask, row.mask), "share": lungs.share, "fallback": lungs.fallback})
            bar.advance(task)
    return Scored(pd.DataFrame(rows))


def shares_by_group(segmenter: LungSegmenter, manifest: pd.DataFrame) -> pd.DataFrame:
    """Each file's lung share and whether the fallback was used, with its `group` (source / three-class label)."""
    files = manifest.drop_duplicates("sha256").reset_index(drop=True)
    shares, fallbacks = [], []
    with progress_bar() as bar:
        task = bar.add_task("lung share per image", total=len(files))
        for start in range(0, len(files), 16):
            masks = segmenter.segment_many([read_grayscale(p) for p in files["path"].iloc[start:start + 16]])
            shares += [m.share for m in masks]
            fallbacks += [m.fallback for m in masks]
            bar.advance(task, len(masks))
    labels = files["finding"].map(lambda f: label_for(f, "three-class") or "unmapped")
    return files.assign(group=files["source"] + " / " + labels, share=shares, fallback=fallbacks)


def share_table(shares: pd.DataFrame) -> pd.DataFrame:
    table = shares.groupby("group").agg(images=("share", "size"), median=("share", "median"),
                                        q1=("share", lambda s: s.quantile(0.25)),
                                        q3=("share", lambda s: s.quantile(0.75)), fallbacks=("fallback", "sum"))
    return table.round(3)


def share_verdict(table: pd.DataFrame) -> str:
    spread = float(table["median"].max() - table["median"].min())
    if spread > SHARE_DIFFERENCE:
        widest, narrowest = table["median"].idxmax(), table["median"].idxmin()
        return (f"The segmenter draws lungs of different sizes per source/label: median share "
                f"{table['median'].max():.2f} ({widest}) vs {table['median'].min():.2f} ({narrowest}). The images "
                "differ in framing (RSNA's are cropped square around the chest, Cohen's are figures of any framing), "
                "and a lung crop or mask carries that difference to a classifier: a possible shortcut.")
    return f"The segmenter draws lungs of similar size for every source and label (medians within {spread:.2f})."


def plot_figures(held_out: Scored, shares: pd.DataFrame, out: Path) -> list[Path]:
    """Two figures without pixels of the data: held-out Dice per image, and the lung share per group."""
    figure = Figure(figsize=(5, 3.2))
    axis = figure.subplots()
    axis.hist(held_out.rows["dice"], bins=np.linspace(0.5, 1, 26), color="tab:blue")
    axis.set_xlabel("Dice vs hand-drawn outline (held-out patients)")
    axis.set_ylabel("images")
    axis.set_title(f"lung segmenter: {len(held_out.rows)} held-out images", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "lungs-dice.png", dpi=110)
    groups = sorted(shares["group"].unique())
    figure = Figure(figsize=(6, 0.45 * len(groups) + 1.2))
    axis = figure.subplots()
    axis.boxplot([shares.loc[shares["group"] == g, "share"] for g in groups], orientation="horizontal",
                 showfliers=False)
    axis.set_yticks(range(1, len(groups) + 1), [f"{g} (n={int((shares['group'] == g).sum())})" for g in groups],
                    fontsize=8)
    axis.set_xlabel("share of the image the predicted lungs cover")
    axis.set_title("lung share by source / label", fontsize=9)
    figure.tight_layout()
    figure.savefig(out / "lungs-share.png", dpi=110)
    return [out / "lungs-dice.png", out / "lungs-share.png"]


def contact_sheet(segmenter: LungSegmenter, shares: pd.DataFrame, out: Path, seed: int = 0) -> Path:
    """RSNA normals and Cohen non-COVID images (seeded sample) with the predicted outline."""
    chosen = pd.concat([part.sample(min(SHEET_PER_GROUP, len(part)), random_state=seed)
                        for group, part in shares.groupby("group") if "covid" not in group.split(" / ")[1]])
    columns = 4
    figure = Figure(figsize=(3 * columns, 3.3 * int(np.ceil(len(chosen) / columns))))
    axes = figure.subplots(int(np.ceil(len(chosen) / columns)), columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, row in zip(axes.ravel(), chosen.itertuples()):
        gray = read_grayscale(row.path)
        lungs = segmenter.segment(gray)
        axis.imshow(outline_overlay(gray, lungs))
        axis.set_title(f"{row.group}\nshare {lungs.share:.2f}{' FALLBACK' if lungs.fallback else ''}", fontsize=8)
    figure.tight_layout()
    figure.savefig(out / "contact-sheet.png", dpi=90)
    return out / "contact-sheet.png"


def median_ms(run, per: int = 1, runs: int = TIMED_RUNS) -> float:
    """Median wall-clock milliseconds of `run()` over `runs` runs (after two unmeasured ones), per item."""
    for _ in range(2):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)) / per


def segmenter_speed(segmenter: LungSegmenter, grays: list[np.ndarray]) -> SegmenterSpeed:
    """Milliseconds per image of the network alone (batch of 1 and 16 letterboxed images) and of `segment()` of
    each image at its own size, on this machine."""
    squares = np.stack([letterbox(gray, segmenter.size)[0] for gray in (grays * 16)[:16]])
    return SegmenterSpeed(
        machine=f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
                f"onnxruntime {onnxruntime_version}",
        backend=segmenter.backend_name, threads=segmenter.threads or os.cpu_count() or 1,
        input_size=segmenter.size,
        network_ms_batch_1=median_ms(lambda: segmenter.letterboxed_probabilities(squares[:1])),
        network_ms_batch_16=median_ms(lambda: segmenter.letterboxed_probabilities(squares), len(squares)),
        segment_ms=median_ms(lambda: [segmenter.segment(gray) for gray in grays], len(grays)),
        n_images=len(grays))


def evaluate_segmenter(data_root: str | Path, out: str | Path, folder: str | Path | None = None,
                       bootstrap: PatientBootstrap = PatientBootstrap()) -> LungEvaluation:
    data_root, out = Path(data_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    segmenter = LungSegmenter(folder)
    split = pd.read_csv(segmenter.folder / "split.csv", dtype=str, keep_default_na=False)
    cohen = import_cohen(data_root / COHEN).manifest
    cohen = cohen.assign(segmenter_split=cohen["sha256"].map(split.drop_duplicates("sha256")
                                                             .set_index("sha256")["split"]).fillna("unseen"))
    annotations = annotation_table(cohen, data_root / COHEN, data_root / V7_ZIP)
    test = cohen[cohen["segmenter_split"] == "test"]
    unseen = cohen[cohen["segmenter_split"] == "unseen"]
    held_out = score_against(segmenter, annotations.of("v7")[lambda t: t["image_id"].isin(test["image_id"])], test,
                             "held-out V7 outlines")
    vae = score_against(segmenter, annotations.of("lungvae")[lambda t: t["image_id"].isin(unseen["image_id"])],
                        unseen, "lungVAE masks")
    boxes = score_against(segmenter, annotations.of("coco-boxes")[lambda t: t["image_id"].isin(unseen["image_id"])],
                          unseen, "COCO lung boxes")
    rsna = import_csv(data_root / RSNA_TABLE, "filename", "finding", root=data_root / RSNA_IMAGES,
                      source="rsna").manifest
    sample = pd.concat([cohen, rsna.sample(min(RSNA_SAMPLE, len(rsna)), random_state=0)], ignore_index=True)
    shares = shares_by_group(segmenter, sample)
    table = share_table(shares)
    vae_rows = vae.rows.assign(covid=vae.rows["finding"].str.contains("COVID-19"))
    both = annotations.of("v7").drop_duplicates("sha256").merge(
        annotations.of("lungvae").drop_duplicates("sha256")[["sha256", "mask"]], on="sha256", suffixes=("", "_vae"))
    outline_agreement = [dice_and_iou(row.mask, row.mask_vae)[0] for row in both.itertuples()]
    result = LungEvaluation.model_validate({
        "model": segmenter.identity(), "intended_use": NOT_FOR_CLINICAL_USE, "ci_method": bootstrap.method,
        "held_out": {"data": "V7 Labs hand-drawn outlines of the segmenter's test patients (COVID-19 images)",
                     **held_out.summary(bootstrap)},
        "lungvae": {"data": "lungVAE model masks of Cohen images the segmenter never saw (they leave out the lung "
                            "behind the heart, which the V7 outlines and this segmenter include)",
                    "v7_vs_lungvae": {"n_images": len(outline_agreement),
                                      "dice": float(np.mean(outline_agreement)) if outline_agreement else None,
                                      "note": "the two annotations against each other, on the images that have both: "
                                              "the best Dice a segmenter that draws like V7 can get against lungVAE"},
                    "covid": Scored(vae_rows[vae_rows["covid"]]).summary(bootstrap),
                    "non_covid": Scored(vae_rows[~vae_rows["covid"]]).summary(bootstrap)},
        "coco_boxes": {"data": "COCO lung boxes of Cohen images the segmenter never saw: IoU of the bounding box of "
                               "the predicted lungs with that of the two boxes",
                       **boxes.summary(bootstrap, ("box_iou",))},
        "lung_share": {"data": f"Cohen frontal images and {min(RSNA_SAMPLE, len(rsna))} RSNA normals (seeded sample)",
                       "by_group": table.reset_index().to_dict(orient="records"), "verdict": share_verdict(table)},
        "speed": segmenter_speed(segmenter, [read_grayscale(path) for path in held_out.rows["path"]]),
    })
    write_json(out / "lungs-evaluation.json", result.to_json())
    held_out.rows.drop(columns=["path"]).to_csv(out / "held-out.csv", index=False)
    plot_figures(held_out, shares, out)
    contact_sheet(segmenter, shares, out)
    write_card(segmenter.folder, result)
    return result


def write_card(folder: Path, result: LungEvaluation) -> None:
    """The segmenter's model_card.json: what it is, its figures with provenance, its limits."""
    path = folder / "model.json"
    contract = LungModelContract.parse(read_json(path), f"{path} (a lung segmenter's model.json)")
    held = result.held_out
    card = LungModelCard(
        model=contract.name, intended_use=NOT_FOR_CLINICAL_USE, not_for_clinical_use=True,
        what="Lung masks of frontal chest radiographs (both lungs, the lung behind the heart included), for "
             "cropping or masking before classification and for the shortcut audit and Grad-CAM heat share.",
        architecture=contract.architecture, pretrained=contract.pretrained, training_data=contract.data,
        evaluation=result,
        limitations=[
            "Trained on hand-drawn outlines of COVID-19 images only (the only ones published): other findings and "
            "other sources are checked indirectly (lungVAE masks, COCO boxes, lung shares, contact sheet).",
            result.lung_share.verdict,
            "A mask with no lung, one lung or an implausible share is replaced by a fixed rectangle (counted as "
            "fallbacks above).",
            f"Held-out figures: {held.n_images} images of {held.n_patients} patients; small, wide intervals.",
        ],
    )
    write_json(folder / "model_card.json", card.to_json())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], parents=[
        option("--data", required=True, type=Path, help="folder holding covid-chestxray-dataset/, "
                                                        "v7labs-covid-19-xray-dataset/ and rsna-normal-224/"),
        out_option(), option("--model", type=Path, help="segmenter folder (default: the shipped one)")])
    args = parser.parse_args(argv)
    result = evaluate_segmenter(args.data, args.out, args.model)
    held = result.held_out
    dice_low, dice_high = held.dice_ci or (float("nan"), float("nan"))
    iou_low, iou_high = held.iou_ci or (float("nan"), float("nan"))
    stderr.print(f"held-out Dice {held.dice:.3f} [{dice_low:.3f}, {dice_high:.3f}], IoU {held.iou:.3f} "
                 f"[{iou_low:.3f}, {iou_high:.3f}] (95% CIs; {held.n_images} images, {held.n_patients} "
                 f"patients); network {result.speed.network_ms_batch_1:.2f} ms per image alone, "
                 f"{result.speed.segment_ms:.2f} ms per segment() ({result.speed.machine}); wrote {args.out}")


if __name__ == "__main__":
    main()
