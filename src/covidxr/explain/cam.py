"""Class activation maps through pytorch-grad-cam (Grad-CAM, Grad-CAM++, EigenCAM) for any backbone,
the share of heat inside each image's lung mask (from the lung segmenter), overlays with the lung outline,
and the most confidently wrong images."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from covidxr.errors import UsageError
from covidxr.lungs import LungMask
from covidxr.models.classifier import Classifier

METHODS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "eigencam": EigenCAM}


def target_layer(model: Classifier) -> nn.Module:
    """The backbone's last feature stage (timm's feature_info), else its last convolution."""
    info = getattr(model.backbone, "feature_info", None)
    if info:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return model.backbone.get_submodule(name)
    convolutions = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    return convolutions[-1]


def heatmaps(model: nn.Module, pixels: torch.Tensor, class_index: int, method: str = "gradcam",
             layer: nn.Module | None = None) -> np.ndarray:
    """(N, H, W) maps in [0, 1] of what drives output `class_index`, for (N, 1, H, W) grey pixels 0..255, at
    `layer` (default: a Classifier's `target_layer`)."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    model.eval()
    with METHODS[method](model=model, target_layers=[layer or target_layer(model)]) as cam:
        maps = cam(input_tensor=pixels.float(), targets=[ClassifierOutputTarget(class_index)] * len(pixels))
    return np.asarray(maps, dtype=np.float32)


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
