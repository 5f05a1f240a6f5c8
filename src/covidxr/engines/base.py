"""What an engine is given and answers: the per-row work of a command split in two halves (a `Stage`), and the
engine's interface (a model comes as its `Predictor`, whose `request` any process can load)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from covidxr.predict import Prediction, Predictor

if TYPE_CHECKING:  # the audit's types import PyTorch; predicting with ONNX Runtime never does
    import pandas as pd

    from covidxr.data.cache import PixelCache, PrepareReport
    from covidxr.data.preprocess import Preprocessor
    from covidxr.evaluation.audit import OcclusionPass
    from covidxr.lungs import LungSegmenter
    from covidxr.lungs.segment import SegmentedFile
    from covidxr.models.loading import RunModel


class Stage(Protocol):
    """A command's per-row work in two halves, picklable: `decode` one item (light and stateless: a Ray task), then
    a batch of decoded items through what `open` returns (a Ray actor opens it once, in its `__init__`: a model, an
    ONNX Runtime session), one JSON-able dict per item; a stage that holds no model runs whole in tasks. With a
    `results` folder, answers are kept there part by part, named by the `identity` of their items, so a rerun skips
    the parts done."""

    batch: int
    results: Path | None
    """Where answers are kept part by part (None: not kept)."""

    @property
    def holds_model(self) -> bool:
        """Whether `open` opens a model (run in actors); else the whole stage runs in tasks."""
        ...

    def identity(self, item: Any) -> Any: ...

    def decode(self, item: Any) -> Any: ...

    def open(self, threads: int) -> Callable[[list[Any]], list[dict]]: ...


class Engine(Protocol):
    def predict(self, predictor: Predictor, paths: Sequence[Path]) -> list[Prediction]:
        """Predictions of `paths` in their order by `predictor` (loaded here; elsewhere from its `request`)."""
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
