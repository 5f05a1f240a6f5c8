"""Is this a frontal chest radiograph? The input check that predict, serve and DICOM output ask before any
probability (parameters: `covidxr.runs.inputcheck`; fitting: `python -m covidxr.inputcheck.fit`).

    >>> from covidxr.inputcheck import shipped_input_check
    >>> result, lungs = shipped_input_check().check(gray)   # InputCheckResult, the segmenter's LungMask
    >>> result.status, result.reason, result.score
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from covidxr.errors import CovidxrError
from covidxr.inputcheck.features import GLOBAL_FEATURES, LUNG_FEATURES, ImageFeatures, image_features_many
from covidxr.lungs import LungMask, LungSegmenter, shipped_segmenter
from covidxr.runs import read_json, shipped_dir
from covidxr.runs.inputcheck import SKIPPED, InputCheckModel, InputCheckResult

__all__ = ["InputChecker", "InputCheckResult", "SKIPPED", "feature_names", "feature_vectors", "shipped_input_check"]
SHIPPED_FILE = "input_check.json"


def feature_names(components: int) -> list[str]:
    return [f"thumbnail_pc{index}" for index in range(components)] + ["thumbnail_residual", *GLOBAL_FEATURES,
                                                                        *LUNG_FEATURES]


def feature_vectors(thumbnails: np.ndarray, statistics: np.ndarray, pca_mean: np.ndarray,
                    pca_components: np.ndarray) -> np.ndarray:
    """The check's raw feature vectors (one row per image): the thumbnail's PCA coordinates and reconstruction
    error, then the statistics."""
    centred = np.atleast_2d(thumbnails) - pca_mean
    coordinates = centred @ pca_components.T
    residual = np.linalg.norm(centred - coordinates @ pca_components, axis=1) / np.sqrt(centred.shape[1])
    return np.column_stack([coordinates, residual, np.atleast_2d(statistics)])


class InputChecker:
    """A fitted input check with the lung segmenter whose masks it reads. Picklable (worker processes open their
    own segmenter session)."""

    def __init__(self, model: InputCheckModel, segmenter: LungSegmenter | None = None):
        expected = feature_names(len(model.pca_components))
        if model.features != expected:
            raise CovidxrError(f"input check {model.name}: its features {model.features} are not the ones this "
                               f"version computes ({expected}); refit it with `python -m covidxr.inputcheck.fit`")
        self.model = model
        self.segmenter = segmenter or shipped_segmenter()
        self._pca_mean = np.asarray(model.pca_mean)
        self._pca_components = np.asarray(model.pca_components)

    @classmethod
    def from_recorded(cls, recorded: dict | InputCheckModel, source: str | Path,
                      segmenter: LungSegmenter | None = None) -> InputChecker:
        try:
            return cls(InputCheckModel.model_validate(recorded), segmenter)
        except ValueError as error:
            raise CovidxrError(f"{source}: invalid input_check ({error})") from None

    def on_threads(self, threads: int | None) -> InputChecker:
        """This check with its lung segmenter on `threads` threads (1 in worker processes, one per core)."""
        return InputChecker(self.model, self.segmenter.on_threads(threads))

    def vector(self, features: ImageFeatures) -> np.ndarray:
        return feature_vectors(features.thumbnail, features.statistics, self._pca_mean, self._pca_components)[0]

    def check(self, gray: np.ndarray) -> tuple[InputCheckResult, LungMask]:
        """The outcome for a decoded grey image (2-D uint8), and the segmenter's lung mask it looked at."""
        return self.check_many([gray])[0]

    def check_many(self, grays: Sequence[np.ndarray]) -> list[tuple[InputCheckResult, LungMask]]:
        """`check` of each image, the segmenter run once over all of them."""
        return [(self.model.decide(self.vector(features), features.lungs.lungs > 0, features.short_side),
                 features.lungs) for features in image_features_many(grays, self.segmenter)]


@lru_cache(maxsize=1)
def shipped_input_check() -> InputChecker:
    """The input check shipped in the package (fitted by `make input-check`)."""
    path = shipped_dir() / SHIPPED_FILE
    if not path.is_file():
        raise CovidxrError(f"no input check is shipped in this installation ({path}): create it with "
                           "`make input-check`, or predict with --no-input-check")
    return InputChecker.from_recorded(read_json(path), path)
