"""Simple Gradient (Simonyan et al., ICLR 2014 workshop, "Deep Inside Convolutional Networks"), for CLIP.

The score explained is the cosine of the image with its target text, s = t · f(x)/‖f(x)‖, and the map
is |∂s/∂x| summed over the three channels, taken in [0, 1] pixel space (the `PixelEncoder` normalises
inside its forward, so the gradient is the one w.r.t. the image the camera saw). For display and the
metrics it is clipped at each image's 99th percentile (a few very large gradients would otherwise leave
the rest of the map near 0) and min-max scaled to [0, 1].
"""

from __future__ import annotations

import torch

from cliplab.evaluation.saliency._common import (
    check_inputs,
    cosine_scores,
    evaluating,
    minmax,
)
from cliplab.pixels import PixelEncoder

CLIP_PERCENTILE = 0.99


def simple_gradient_raw(encoder: PixelEncoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """|∂s_b/∂x_b| summed over channels: (B, H, W) float32, unscaled.

    pixels: (B, 3, H, W) in [0, 1]; text: (B, D) unit text embedding of each image's target class.
    One forward and one backward for the batch: the gradient of Σ_b s_b w.r.t. x_b is ∂s_b/∂x_b because
    the images do not interact (the encoder runs in eval mode).
    """
    check_inputs(pixels, text)
    x = pixels.detach().requires_grad_(True)
    with evaluating(encoder), torch.enable_grad():
        score = cosine_scores(encoder(x), text).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad.float().abs().sum(dim=1)


def simple_gradient(encoder: PixelEncoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Simple Gradient maps (B, H, W) float32 in [0, 1]: the raw map clipped at its 99th percentile, min-max scaled."""
    raw = simple_gradient_raw(encoder, pixels, text)
    return minmax(torch.minimum(raw, _row_quantile(raw.flatten(1), CLIP_PERCENTILE)[:, None, None]))


def _row_quantile(rows: torch.Tensor, q: float) -> torch.Tensor:
    """(B, n) → (B,) the q-quantile of each row, linear interpolation as `torch.quantile`.

    Written out because `torch.quantile` refuses inputs over 2**24 elements (a batch of ~330 maps at 224 px).
    """
    ordered = rows.sort(dim=1).values
    position = q * (rows.shape[1] - 1)
    below = int(position)
    above = min(below + 1, rows.shape[1] - 1)
    return torch.lerp(ordered[:, below], ordered[:, above], position - below)
