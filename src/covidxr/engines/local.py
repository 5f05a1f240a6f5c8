"""The local engine: this machine, worker processes decoding while this process runs the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from covidxr.data.preprocess import Preprocessor
from covidxr.lungs import LungSegmenter
from covidxr.lungs.segment import SegmentedFile, segment_files
from covidxr.predict import Prediction, Predictor

if TYPE_CHECKING:  # PyTorch: only the audit's occlusion pass needs it; pandas (the pixel cache): only prepare
    import pandas as pd

    from covidxr.data.cache import PixelCache, PrepareReport
    from covidxr.evaluation.audit import OcclusionPass
    from covidxr.models.loading import RunModel


class LocalEngine:
    def predict(self, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        return predictor.predict_files(paths)

    def segment(self, segmenter: LungSegmenter, paths: Sequence[Path], out: Path,
                overlay: bool) -> list[SegmentedFile]:
        return segment_files(paths, out, overlay, segmenter)

    def prepare(self, manifest: pd.DataFrame, root: Path, preprocessor: Preprocessor) -> PrepareReport:
        from covidxr.data.cache import prepare  # lazy: pandas costs predict ~0.3 s of start-up

        return prepare(manifest, root, preprocessor)

    def occlusion(self, run: RunModel, rows: pd.DataFrame, cache: PixelCache,
                  segmenter: LungSegmenter) -> OcclusionPass:
        from covidxr.evaluation.audit import occlusion_on_cache  # lazy: audit loads torch and scikit-learn

        return occlusion_on_cache(run, rows, cache, segmenter)
