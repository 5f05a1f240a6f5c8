"""Class activation maps through pytorch-grad-cam (Grad-CAM, Grad-CAM++, EigenCAM) for any backbone,
the share of heat inside the lung field, overlays, and the most confidently wrong images."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from covidxr.data.regions import lung_field_box, lung_field_mask
from covidxr.errors import UsageError
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


def heatmaps(model: Classifier, pixels: torch.Tensor, class_index: int, method: str = "gradcam") -> np.ndarray:
    """(N, H, W) maps in [0, 1] of what drives `class_index`, for (N, 1, H, W) grey pixels 0..255."""
    if method not in METHODS:
        raise UsageError(f"unknown method {method!r}; accepted: {', '.join(METHODS)}")
    model.eval()
    with METHODS[method](model=model, target_layers=[target_layer(model)]) as cam:
        maps = cam(input_tensor=pixels.float(), targets=[ClassifierOutputTarget(class_index)] * len(pixels))
    return np.asarray(maps, dtype=np.float32)


def lung_heat_share(heatmap: np.ndarray) -> float:
    """Share of the map's total heat inside the approximate lung field."""
    total = float(heatmap.sum())
    return float(heatmap[lung_field_mask(heatmap.shape[0])].sum() / total) if total > 0 else 0.0


def draw_overlay(axis, pixels: np.ndarray, heatmap: np.ndarray, title: str,
                 lung_mask: np.ndarray | None = None) -> None:
    """The prepared image, its heat map, the approximate lung field dashed and, when given, the outline
    of a lung mask (same shape as `pixels`, nonzero inside the lungs)."""
    axis.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    axis.imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
    top, bottom, left, right = lung_field_box(pixels.shape[0])
    axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor="white",
                             linestyle="--", linewidth=0.8))
    if lung_mask is not None:
        axis.contour(np.asarray(lung_mask) > 0, levels=[0.5], colors="lime", linewidths=0.8)
    axis.set_title(title, fontsize=8)
    axis.set_axis_off()


def overlay_figure(pixels: np.ndarray, heatmap: np.ndarray, title: str,
                   lung_mask: np.ndarray | None = None) -> Figure:
    """The overlay as a matplotlib Figure of its own (no pyplot state, so threads do not share it)."""
    figure = Figure(figsize=(4, 4.3))
    draw_overlay(figure.subplots(), pixels, heatmap, title, lung_mask)
    figure.tight_layout()
    return figure


def save_overlay(pixels: np.ndarray, heatmap: np.ndarray, title: str, out: str | Path | BinaryIO,
                 lung_mask: np.ndarray | None = None) -> Path | BinaryIO:
    """PNG overlay to a path (folders made) or a binary file object."""
    if isinstance(out, (str, Path)):
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
    overlay_figure(pixels, heatmap, title, lung_mask).savefig(out, dpi=100, format="png")
    return out


def overlay_rgb(pixels: np.ndarray, heatmap: np.ndarray, title: str, lung_mask: np.ndarray | None = None,
                dpi: int = 200) -> np.ndarray:
    """The overlay rendered as an (H, W, 3) uint8 RGB array (for a DICOM Secondary Capture)."""
    figure = overlay_figure(pixels, heatmap, title, lung_mask)
    figure.set_dpi(dpi)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def gallery(pixels: np.ndarray, maps: np.ndarray, titles: list[str], out: str | Path, columns: int = 4) -> Path:
    rows = int(np.ceil(len(pixels) / columns))
    figure = Figure(figsize=(3 * columns, 3.2 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.set_axis_off()
    for axis, image, heatmap, title in zip(axes.ravel(), pixels, maps, titles):
        draw_overlay(axis, image, heatmap, title)
    figure.tight_layout()
    figure.savefig(out, dpi=90)
    return Path(out)


def top_losses(truth_index: np.ndarray, probabilities: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` images with the highest cross-entropy loss (most confidently wrong first)."""
    losses = -np.log(np.clip(probabilities[np.arange(len(truth_index)), truth_index], 1e-12, 1.0))
    wrong = probabilities.argmax(axis=1) != truth_index
    order = np.lexsort((-losses, ~wrong))
    return order[:count]
