"""Why `covidxr.metrics.auc_or_none` exists beside scikit-learn: the patient bootstrap calls an AUC thousands of
times per evaluation. Times `sklearn.metrics.roc_auc_score` against `auc_or_none` over the same 1,000 patient
resamples of an evaluation-sized table (823 rows, the shipped model's test split size), checks that both give the
same values, and prints the ratio side by side.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from _common import machine
from covidxr.metrics import PatientBootstrap, auc_or_none

ROWS, RESAMPLES = 823, 1000


def seconds(auc, truth: np.ndarray, scores: np.ndarray, resamples: list[np.ndarray]) -> tuple[float, list[float]]:
    start = time.perf_counter()
    values = [auc(truth[rows], scores[rows]) for rows in resamples]
    return time.perf_counter() - start, values


def main() -> None:
    rng = np.random.default_rng(0)
    truth = rng.random(ROWS) < 0.3
    scores = np.round(np.clip(0.35 * truth + rng.random(ROWS) * 0.65, 0, 1), 3)  # rounded: ties, as real scores have
    patients = pd.Series(rng.integers(0, 790, ROWS).astype(str))
    resamples = list(PatientBootstrap(RESAMPLES).rows(patients))
    ours, ours_values = seconds(auc_or_none, truth, scores, resamples)
    sklearn, sklearn_values = seconds(roc_auc_score, truth, scores, resamples)
    assert np.allclose(ours_values, sklearn_values, atol=1e-12), "auc_or_none differs from roc_auc_score"
    print(f"machine: {machine()}")
    print(f"{RESAMPLES} patient resamples of {ROWS} rows: roc_auc_score {sklearn:.2f} s, auc_or_none {ours:.2f} s "
          f"(equal values)")
    print(f"roc_auc_score / auc_or_none time: {sklearn / ours:.1f}x")


if __name__ == "__main__":
    main()
