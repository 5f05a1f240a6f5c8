"""What an engine is given and answers: a model request any process can load, the per-row work of a command split
in two halves (a `Stage`), and the engine's interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from covidxr.predict import Prediction, Predictor, load_model

if TYPE_CHECKING:  # the audit's types import PyTorch; predicting with ONNX Runtime never does
    import pandas as pd

    from covidxr.data.cache import PixelCache, PrepareReport
    from covidxr.data.preprocess import Preprocessor
    from covidxr.evaluation.audit import OcclusionPass
    from covidxr.lungs import LungSegmenter
    from covidxr.lungs.segment import SegmentedFile
    from covidxr.models.loading import RunModel


@dataclass(frozen=True)
class ModelRequest:
    """What `load_model` needs, so that any process (a Ray actor on another node too) builds the same model."""

    run: Path
    operating_point: str | None = None
    prevalence: float | None = None
    input_check: bool = True

    def load(self, threads: int | None = None) -> Predictor:
        return load_model(self.run, self.operating_point, self.prevalence, self.input_check, threads)


class Stage(Protocol):
    """A command's per-row work in two halves, picklable: `decode` one item (light and stateless: a Ray task), then
    a batch of decoded items through what `open` returns (a Ray actor opens it once, in its `__init__`: a model, an
    ONNX Runtime session), one JSON-able dict per item; a stage that holds no model runs whole in tasks. With a
    `results` folder, answers are kept there part by part, named by the `identity` of their items, so a rerun skips
    the parts done."""

    batch: int

    @property
    def holds_model(self) -> bool:
        """Whether `open` opens a model (run in actors); else the whole stage runs in tasks."""
        ...

    def results(self) -> Path | None: ...

    def identity(self, item: Any) -> Any: ...

    def decode(self, item: Any) -> Any: ...

    def open(self, threads: int) -> Callable[[list[Any]], list[dict]]: ...


class Engine(Protocol):
    def predict(self, request: ModelRequest, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        """Predictions of `paths` in their order (`predictor`: the model `request` loads, already loaded here)."""
        ...

    def segment(self, segmenter: LungSegmenter, paths: Sequence[Path], out: Path,
                overlay: bool) -> list[SegmentedFile]:
        """`segment.csv`'s rows of `paths` in their order, each file's mask (and overlay) written in `out`."""
        ...

    def prepare(self, manifest: pd.DataFrame, root: Path, preprocessor: Preprocessor) -> PrepareReport:
        """The manifest's images the cache under `root` lacks, prepared into it (`covidxr.data.cache.prepare`)."""
        ...

    def occlusion(self, run: RunModel, rows: pd.DataFrame, cache: PixelCache,
                  segmenter: LungSegmenter) -> OcclusionPass:
        """The audit's occlusion pass of the rows' prepared pixels (`covidxr.evaluation.audit.occlusion_batch`)."""
        ...
