"""Class activation maps: Grad-CAM, Grad-CAM++ and EigenCAM through pytorch-grad-cam for any backbone, and
Grad-CAM without PyTorch from the `gradcam` output of a model.onnx (exported for classifiers where it has a
closed form, see covidxr.models.gradcam; scaled here exactly as pytorch-grad-cam scales its maps); the share
of heat inside each image's lung mask (from the lung segmenter), overlays with the lung outline, and the most
confidently wrong images. PyTorch is imported only by `heatmaps`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from covidxr.errors import UsageError
from covidxr.lungs import LungMask
from covidxr.models.onnx_runtime import OnnxModel

if TYPE_CHECKING:
    import torch
    from torch import nn

METHODS = ("gradcam", "gradcam++", "eigencam")
GRADCAM_OUTPUT = "gradcam"  # covidxr.models.gradcam.OUTPUT (that module imports PyTorch)


def heatmaps(model: nn.Module, pixels: torch.Tensor, class_index: int, method: str = "gradcam",
             layer: nn.Module | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of what drives output `class_index`, for (N, 1, H, W) grey pixels 0..255, at
    `layer` (default: a Classifier's `target_layer`)."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus  # lazy: imports PyTorch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from covidxr.models.gradcam import target_layer

    cam_class = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}[method]
    model.eval()
    with cam_class(model=model, target_layers=[layer or target_layer(model)]) as cam:
        maps = cam(input_tensor=pixels.float(), targets=[ClassifierOutputTarget(class_index)] * len(pixels))
    return np.asarray(maps, dtype=np.float32)


def _unit_range(image: np.ndarray) -> np.ndarray:
    image = image - np.min(image)
    return image / (1e-7 + np.max(image))


def scaled_like_pytorch_grad_cam(maps: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, h, w) Grad-CAM maps after their ReLU -> (N, height, width) in [0, 1], as pytorch-grad-cam makes them
    (to [0, 1], resized by OpenCV, clipped at 0, to [0, 1] again)."""
    return np.float32([_unit_range(np.maximum(cv2.resize(np.float32(_unit_range(image)), (width, height)), 0))
                       for image in maps])


def onnx_gradcam(model: OnnxModel | None, pixels: np.ndarray, class_index: int) -> np.ndarray | None:
    """(N, H, W) Grad-CAM maps in [0, 1] of output `class_index` for (N, H, W) grey pixels 0..255, from the
    `gradcam` output of `model`; None when there is no model or its file has no such output."""
    if model is None or GRADCAM_OUTPUT not in {output.name for output in model.session.get_outputs()}:
        return None
    feed = {"pixels": np.ascontiguousarray(pixels[:, None], dtype=np.float32)}
    maps = model.session.run([GRADCAM_OUTPUT], feed)[0][:, class_index]
    return scaled_like_pytorch_grad_cam(maps, pixels.shape[2], pixels.shape[1])


def lung_heat_share(heatmap: np.ndarray, lungs: np.ndarray) -> float:
    """Share of the map's total heat inside the lung mask (a bool array of the map's shape)."""
    total = float(heatmap.sum())
    return float(heatmap[lungs].sum() / total) if total > 0 else 0.0


def draw_overlay(axis, pixels: np.ndarray, heatmap: np.ndarray, title: str, lungs: LungMask) -> None:
    """Image, heat map and the lung outline (dashed where the mask is the fallback rectangle)."""
    axis.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    axis.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    if lungs.mask.any():
        axis.contour(lungs.mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8,
                     linestyles="dashed" if lungs.fallback else "solid")
    axis.set_title(title, fontsize=8)
    axis.set_axis_off()


def overlay_figure(pixels: np.ndarray, heatmap: np.ndarray, title: str, lungs: LungMask) -> Figure:
    """The overlay as a matplotlib Figure of its own (no pyplot state, so threads do not share it)."""
    figure = Figure(figsize=(4, 4.3))
    draw_overlay(figure.subplots(), pixels, heatmap, title, lungs)
    figure.tight_layout()
    return figure


def save_overlay(pixels: np.ndarray, heatmap: np.ndarray, title: str, out: str | Path | BinaryIO,
                 lungs: LungMask) -> Path | BinaryIO:
    """PNG overlay to a path (folders made) or a binary file object."""
    if isinstance(out, (str, Path)):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(pixels, heatmap, title, lungs).savefig(out, dpi=100, format="png")
    return out


def overlay_rgb(pixels: np.ndarray, heatmap: np.ndarray, title: str, lungs: LungMask, dpi: int = 200) -> np.ndarray:
    """The overlay rendered as an (H, W, 3) uint8 RGB array (for a DICOM Secondary Capture)."""
    figure = overlay_figure(pixels, heatmap, title, lungs)
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def gallery(pixels: np.ndarray, maps: np.ndarray, titles: list[str], lungs: list[LungMask], out: str | Path,
            columns: int = 4) -> Path:
    rows = int(np.ceil(len(pixels) / columns))
    figure = Figure(figsize=(3 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, image, heatmap, title, mask in zip(axes.ravel(), pixels, maps, titles, lungs):
        draw_overlay(axis, image, heatmap, title, mask)
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    return Path(out)


def top_losses(truth_index: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` images with the highest cross-entropy loss (most confidently wrong first)."""
    losses = -np.log(np.clip(probabilities[np.arange(len(truth_index)), truth_index], 1e-12, 1.0))
    wrong = probabilities.argmax(axis=1) != truth_index
    order = np.lexsort((-losses, ~wrong))
    return order[:count]
