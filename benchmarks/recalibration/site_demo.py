"""Local recalibration on the shared data: the shipped model refitted (calibration and operating points, never
weights) on a small labelled sample of one source, measured before and after on the rest of that source.

    python benchmarks/recalibration/site_demo.py --data out/default-model/binary.csv -o out/site-demo

The "site" is Cohen's collection restricted to the shipped model's validation and test patients (never trained
on): it holds both classes, at a prevalence far from the 7% the shipped calibration was fitted at. Its patients are
split in two halves (seeded); `covidxr calibrate` fits on the first, and both models are evaluated on the second.
Prints ECE and each operating point's sensitivity and specificity with patient-bootstrap 95% CIs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from covidxr.data.manifest import load_manifest, save_manifest
from covidxr.evaluation.evaluate import evaluate
from covidxr.evaluation.metrics import format_estimate
from covidxr.evaluation.recalibrate import calibrate
from covidxr.runs import shipped_run


def site_halves(manifest_path: Path, out: Path, seed: int) -> tuple[Path, Path]:
    manifest = load_manifest(manifest_path)
    site = manifest[(manifest["source"] == "cohen") & manifest["split"].isin(["val", "test"])]
    patients = np.array(sorted(site["patient_id"].unique()))
    chosen = set(np.random.default_rng(seed).permutation(patients)[: len(patients) // 2])
    fit, rest = site[site["patient_id"].isin(chosen)], site[~site["patient_id"].isin(chosen)]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "site-fit.csv", out / "site-rest.csv"
    for part, path in zip((fit, rest), paths):
        save_manifest(part.assign(split="").reset_index(drop=True), path)
    return paths


def summary(name: str, result: dict) -> list[str]:
    lines = [f"{name}: ECE {format_estimate(result, 'ece')} (calibration {result['calibration']}, fitted at "
             f"prevalence {result['calibration_prevalence']:.3f})"]
    for point, figures in result["operating_points"].items():
        lines.append(f"  {point:16s} threshold {figures['threshold']:.3f}: sensitivity "
                     f"{format_estimate(figures, 'sensitivity')}, specificity "
                     f"{format_estimate(figures, 'specificity')}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the shipped model's built manifest")
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    fit, rest = site_halves(args.data, args.out, args.seed)
    recalibrated = args.out / "recalibrated"
    sample = calibrate(shipped_run(), fit, recalibrated)
    print(f"fitted on {sample['images']} images of {sample['patients']} patients ({sample['positives']} positives, "
          f"{sample['negatives']} negatives) of Cohen's validation and test patients")
    before, after = evaluate(shipped_run(), rest, split="all"), evaluate(recalibrated, rest, split="all")
    print(f"measured on the other {before['n_images']} images, {before['n_patients']} patients, prevalence "
          f"{before['prevalence']:.3f}; CIs: {before['ci_method']}")
    for line in summary("shipped model", before) + summary("recalibrated on the site sample", after):
        print(line)


if __name__ == "__main__":
    main()
