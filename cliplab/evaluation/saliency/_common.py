"""What the saliency methods share: the score they explain, eval mode for the call, the patch grid, min-max."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.errors import CliplabError


def check_inputs(pixels: torch.Tensor, text: torch.Tensor) -> None:
    """pixels (B, 3, H, W) and text (B, D), one target text per image."""
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise CliplabError(f"pixels must be (B, 3, H, W), got {tuple(pixels.shape)}")
    if text.dim() != 2 or text.shape[0] != pixels.shape[0]:
        raise CliplabError(
            f"text must be (B, D) with one row per image (B = {pixels.shape[0]}), got {tuple(text.shape)}"
        )


def cosine_scores(embedding: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """s_b = t_b · f_b/‖f_b‖: (B, D), (B, D) unit text → (B,), in float32 whatever autocast produced."""
    return (F.normalize(embedding.float(), dim=-1) * text.float()).sum(-1)


@contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode for the call, the caller's mode restored after.

    Training-mode BatchNorm (ResNet towers) would normalise with batch statistics, making a map depend on
    the other images of the batch, and would update the running statistics.
    """
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def patch_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Batch-first ViT tokens (B, L, ...) → the patch tokens on the model's grid (B, h, w, ...).

    The prefix tokens (CLS and any registers) come first; there are L − h·w of them.
    """
    h, w = grid
    n_prefix = tokens.shape[1] - h * w
    if n_prefix < 0:
        raise CliplabError(
            f"{tokens.shape[1]} tokens cannot hold a {h}x{w} patch grid: is the layout (B, L, C)?"
        )
    return tokens[:, n_prefix:].reshape(tokens.shape[0], h, w, *tokens.shape[2:])


def minmax(maps: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling of (B, H, W) to [0, 1]; a constant map becomes all zeros."""
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    return (maps - lo) / (hi - lo).clamp_min(torch.finfo(maps.dtype).tiny)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, h, w) → (B, H, W), bilinear with half-pixel centres (align_corners=False)."""
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
