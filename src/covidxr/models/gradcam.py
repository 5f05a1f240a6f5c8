"""Grad-CAM as a forward computation, so that an exported ONNX file can give the class activation maps
without PyTorch (and without autograd, which ONNX export cannot trace).

Grad-CAM at layer A for logit c is relu(sum_k alpha_k A_k) with alpha_k the mean over positions of
d logit_c / d A_k. Where everything after A is known, that gradient has a closed form:

- the `linear` head (global average pool -> dropout -> dense W) on the backbone's last feature map F:
  d logit_c / d F_j(p) = W_cj / HW at every position p;
- A = F (the target layer is the last feature map: ResNet, DenseNet): alpha = W_c / HW, the class activation
  map of Zhou et al. (2016);
- F = act(BN(conv1x1(A))) (EfficientNet, MobileNet: the target layer is the last stage of `blocks`, then
  `conv_head` and `bn2`, act ReLU, ReLU6 or none): d logit_c / d A_k(p) = sum_j W_cj / HW * act'(z_j(p)) * s_j *
  V_jk, with s the batch norm's scale and V the 1x1 convolution; act'(z) is read off the output (ReLU6:
  1 where 0 < F < 6, which is exactly where PyTorch's backward passes the gradient).

Any other tail (a max-pool, another head) has no such form here: `analytic_gradcam` says None and
explanations go through PyTorch.
"""

from __future__ import annotations

import torch
from torch import nn

from covidxr.models.classifier import Classifier, pooled

OUTPUT = "gradcam"
"""The ONNX output: (batch, classes, h, w) Grad-CAM maps at the target layer, after the ReLU, before scaling."""


def target_layer(model: Classifier) -> nn.Module:
    """The backbone's last feature stage (timm's feature_info), else its last convolution."""
    info = getattr(model.backbone, "feature_info", None)
    if info:
        name = info[-1]["module"] if isinstance(info, list) else info.module_name()[-1]
        return model.backbone.get_submodule(name)
    convolutions = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
    return convolutions[-1]


class WithGradCam(nn.Module):
    """(logits, pooled embedding, Grad-CAM maps of every class) from one pass of the backbone; built by
    `analytic_gradcam` only for classifiers whose tail it knows."""

    def __init__(self, classifier: Classifier, layer: nn.Module, head_weight: torch.Tensor,
                 tail: tuple[nn.Conv2d, nn.Module] | None):
        super().__init__()
        self.classifier, self.layer, self.tail = classifier, layer, tail
        if tail is None:
            self.register_buffer("alpha_weight", head_weight.detach().clone(), persistent=False)
        else:
            convolution, norm = tail
            scale = norm.weight.detach() / torch.sqrt(norm.running_var.detach() + norm.eps)
            self.register_buffer("scaled_head", (head_weight.detach() * scale).clone(), persistent=False)
            self.register_buffer("convolution", convolution.weight.detach()[:, :, 0, 0].clone(), persistent=False)
            self.ceiling = 6.0 if isinstance(norm.act, nn.ReLU6) else None
            self.linear = isinstance(norm.act, nn.Identity)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        captured: list[torch.Tensor] = []
        hook = self.layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        try:
            features = self.classifier.features(pixels)
        finally:
            hook.remove()
        activations = captured[-1]
        logits = self.classifier.head(features)
        positions = features.shape[2] * features.shape[3]
        if self.tail is None:
            alpha = self.alpha_weight[None].expand(features.shape[0], -1, -1) / positions  # (B, classes, K)
        else:
            if self.linear:
                passed = torch.ones_like(features)
            else:
                passed = features > 0
                if self.ceiling is not None:
                    passed = passed & (features < self.ceiling)
            share = passed.float().mean(dim=(2, 3))  # (B, J): mean over positions of act'(z)
            alpha = torch.einsum("cj,bj,jk->bck", self.scaled_head, share, self.convolution) / positions
        maps = torch.relu(torch.einsum("bck,bkhw->bchw", alpha, activations.float()))
        return logits, pooled(features), maps


def _linear_head_weight(model: Classifier) -> torch.Tensor | None:
    head = model.head
    if not (isinstance(head, nn.Sequential) and len(head) == 4 and isinstance(head[0], nn.AdaptiveAvgPool2d)
            and head[0].output_size in (1, (1, 1)) and isinstance(head[1], nn.Flatten)
            and isinstance(head[2], nn.Dropout) and isinstance(head[3], nn.Linear)):
        return None
    return head[3].weight


def _conv_norm_tail(model: Classifier, layer: nn.Module) -> tuple[nn.Conv2d, nn.Module] | None:
    """(conv_head, bn2) when the backbone's features are bn2(conv_head(layer output)) with a 1x1 convolution
    and a batch norm whose activation is ReLU, ReLU6 or none."""
    backbone = model.backbone
    convolution, norm = getattr(backbone, "conv_head", None), getattr(backbone, "bn2", None)
    blocks = getattr(backbone, "blocks", None)
    if not (isinstance(convolution, nn.Conv2d) and convolution.kernel_size == (1, 1) and convolution.stride == (1, 1)
            and convolution.groups == 1 and convolution.bias is None and isinstance(norm, nn.BatchNorm2d)
            and norm.affine and norm.track_running_stats
            and isinstance(blocks, nn.Sequential) and len(blocks) and layer in (blocks, blocks[-1])
            and isinstance(getattr(norm, "drop", nn.Identity()), nn.Identity)
            and isinstance(getattr(norm, "act", nn.Identity()), (nn.ReLU, nn.ReLU6, nn.Identity))):
        return None
    return convolution, norm


def analytic_gradcam(model: Classifier, size: int) -> WithGradCam | None:
    """The classifier with Grad-CAM as a third output when its head is `linear` and its tail after the target
    layer is one `WithGradCam` knows (checked on a probe: the tail recomputed from the layer's output must give
    the backbone's features); else None."""
    weight = _linear_head_weight(model)
    if weight is None:
        return None
    layer = target_layer(model)
    module = None
    was_training = model.training
    model.eval()
    try:
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
        with torch.no_grad():
            try:
                features = model.features(torch.full((1, 1, size, size), 128.0))
            finally:
                hook.remove()
            if not captured:
                return None
            activations = captured[-1]
            if activations.shape == features.shape and torch.equal(activations, features):
                module = WithGradCam(model, layer, weight, None)
            elif (tail := _conv_norm_tail(model, layer)) is not None:
                if torch.allclose(tail[1](tail[0](activations)), features, atol=1e-5):
                    module = WithGradCam(model, layer, weight, tail)
    finally:
        model.train(was_training)
    return module
