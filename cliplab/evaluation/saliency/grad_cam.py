"""Grad-CAM (Selvaraju et al., ICCV 2017) for a CLIP image tower, through the maintained `grad-cam` package.

The score explained is the cosine of each image with its own target text, s_b = t_b · f(x_b)/‖f(x_b)‖;
the package weights each channel k of the target activation A by the spatial mean of ∂s/∂A_k, sums,
applies ReLU, min-max scales and resizes (bilinear) to the input's H × W.

Target layer:
- ViT: the output of block −2 (`visual.transformer.resblocks[-2]`). The last block's patch tokens do
  not reach the CLS token (only CLS is pooled after it), so their gradient is zero. Its tokens are put
  on the model's own grid (`visual.grid_size`) after dropping the L − h·w prefix tokens, from either
  layout: (B, L, C) when `visual.transformer.batch_first` (open_clip ≥ 2.26), (L, B, C) otherwise. The
  AFT reference's reshape assumed sequence-first and a 16 × 16 grid, wrong on both counts for ViT-B/16.
- ModifiedResNet: `visual.layer4`, already (B, C, h, w).

The package calls `.eval()` and `.zero_grad()` on the model it is given and back-propagates with
`.backward()`, so it gets a thin wrapper that does not register the encoder, the encoder's parameters
are frozen for the call (so nothing lands in their `.grad`), and the gradient path to the activation
goes through a private copy of the input that requires grad.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.errors import CliplabError
from cliplab.evaluation.saliency._common import check_inputs, evaluating, patch_grid
from cliplab.pixels import PixelEncoder


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int], batch_first: bool) -> torch.Tensor:
    """ViT block output → Grad-CAM activation: (B, L, C) or (L, B, C) → (B, C, h, w) float32 patch map.

    grid: the model's own (h, w) = `visual.grid_size`; the L − h·w prefix tokens are dropped.
    """
    if not batch_first:
        tokens = tokens.transpose(0, 1)
    return patch_grid(tokens, grid).permute(0, 3, 1, 2).float()


def grad_cam(encoder: PixelEncoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) float32 in [0, 1] of pixels (B, 3, H, W) in [0, 1] for text (B, D) unit rows.

    One forward and one backward for the batch (the package sums the per-sample scores).
    """
    from pytorch_grad_cam import GradCAM

    check_inputs(pixels, text)
    layer, transform = _target_layer(encoder.visual)
    x = pixels.detach().requires_grad_(True)
    targets = [_CosineWith(t) for t in text.detach().float()]
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    with evaluating(encoder), torch.enable_grad():
        cam = GradCAM(model=_UnitEmbedding(encoder, pixels.device), target_layers=[layer], reshape_transform=transform)
        try:
            for p in trainable:
                p.requires_grad_(False)
            maps = cam(input_tensor=x, targets=targets)
        finally:
            for p in trainable:
                p.requires_grad_(True)
            cam.activations_and_grads.release()
    return torch.from_numpy(maps).to(device=pixels.device, dtype=torch.float32)


def _target_layer(visual: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    if hasattr(visual, "transformer") and hasattr(visual, "grid_size"):
        grid, batch_first = tuple(visual.grid_size), visual.transformer.batch_first
        blocks = visual.transformer.resblocks
        if len(blocks) < 2:
            raise CliplabError("Grad-CAM on a ViT uses block −2: the tower needs at least 2 blocks")
        return blocks[-2], lambda tokens: tokens_to_grid(tokens, grid, batch_first)
    if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):
        # float32 only: the package turns the activations into numpy arrays, which have no bfloat16
        return visual.layer4, lambda fmap: fmap.float()
    raise CliplabError(
        f"Grad-CAM is defined for open_clip VisionTransformer and ModifiedResNet towers, not {type(visual).__name__}"
    )


class _UnitEmbedding(nn.Module):
    """x ↦ f(x)/‖f(x)‖ (B, D), hiding the encoder from the package's `.eval()` / `.zero_grad()`.

    The package takes its device from the model's first parameter: an empty, frozen one stands in.
    """

    def __init__(self, encoder: PixelEncoder, device: torch.device):
        super().__init__()
        self._encoder = (encoder,)  # a tuple, so not a registered submodule
        self.device_anchor = nn.Parameter(torch.empty(0, device=device), requires_grad=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._encoder[0](pixels).float(), dim=-1)


class _CosineWith:
    """Target for one sample: its unit embedding row (D,) ↦ cosine with its text t (D,)."""

    def __init__(self, text: torch.Tensor):
        self.text = text

    def __call__(self, embedding: torch.Tensor) -> torch.Tensor:
        return (embedding * self.text).sum()
