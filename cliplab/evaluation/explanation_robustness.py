"""Robustness of explanations to input noise: SSIM between the map of x and the map of x + N(0, s²).

Protocol of the AFT paper ("Boosting the Visual Interpretability of CLIP via Adversarial Fine-Tuning",
ICLR 2025 submission): s = 1 … 9 /255 in [0, 1] pixel space; it reports Grad-CAM (CLIP 91.18 → 70.58,
AFT 99.99 → 98.55), and any method with the saliency signature works here. SSIM (Wang et al., IEEE TIP
2004, "Image Quality Assessment: From Error Visibility to Structural Similarity") ↑ is scikit-image's
`structural_similarity` with `data_range=1.0` set explicitly (maps live in [0, 1]; recent scikit-image
refuses float images without it, and older versions took the range of the dtype, [−1, 1]) and its other
defaults (7 × 7 uniform window, so maps must be at least 7 × 7).

Noise: x + s·z with z ~ N(0, I) drawn from a seeded `torch.Generator` on the CPU (the same numbers on any
device), a fresh z for every s, and the result CLAMPED to [0, 1]: the model only ever sees images, the
saliency methods and the AFT threat model are defined on [0, 1] pixels, and at s ≤ 9/255 the clamp only
touches pixels within a few noise levels of black or white.

Summary per s: the mean over images and a 95 % Student-t confidence interval for that mean,
mean ± t_{0.975, n−1} · sd / √n (sd with n − 1 in the denominator).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from skimage.metrics import structural_similarity

from cliplab.errors import CliplabError
from cliplab.evaluation.saliency import SaliencyMethod
from cliplab.pixels import PixelEncoder

NOISE_LEVELS: tuple[float, ...] = tuple(s / 255 for s in range(1, 10))
CONFIDENCE = 0.95

METRIC_DIRECTION: dict[str, str] = {"ssim": "↑"}


def add_gaussian_noise(pixels: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """clamp(x + σ·z, 0, 1) with z ~ N(0, I) from `generator` (a CPU generator): (B, 3, H, W) → same shape."""
    noise = torch.randn(pixels.shape, generator=generator, dtype=torch.float32)
    return (pixels + sigma * noise.to(device=pixels.device, dtype=pixels.dtype)).clamp(0.0, 1.0)


def map_ssim(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al., 2004) ↑ of two batches of maps (B, H, W) in [0, 1] → (B,) float64."""
    if maps_a.dim() != 3 or maps_a.shape != maps_b.shape:
        raise CliplabError(f"maps must both be (B, H, W), got {tuple(maps_a.shape)} and {tuple(maps_b.shape)}")
    a = maps_a.detach().double().cpu().numpy()
    b = maps_b.detach().double().cpu().numpy()
    return torch.tensor([structural_similarity(x, y, data_range=1.0) for x, y in zip(a, b)], dtype=torch.float64)


def noise_ssim(
    method: SaliencyMethod,
    encoder: PixelEncoder,
    pixels: torch.Tensor,
    text: torch.Tensor,
    generator: torch.Generator,
    sigmas: tuple[float, ...] = NOISE_LEVELS,
) -> torch.Tensor:
    """SSIM between method(x) and method(clamp(x + s·z)) for each s: (S, B) float64, row k for sigmas[k].

    pixels (B, 3, H, W) in [0, 1]; text (B, D) unit. Pass the same seeded generator through the batches
    of a dataset to make the whole run reproducible.
    """
    clean = method(encoder, pixels, text)
    return torch.stack([map_ssim(clean, method(encoder, add_gaussian_noise(pixels, s, generator), text)) for s in sigmas])


@dataclass(frozen=True)
class SSIMSummary:
    """Per noise level s: mean SSIM over images, the 95 % Student-t interval (low, high), and n images."""

    sigmas: tuple[float, ...]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: int


def summarise(ssim: torch.Tensor, sigmas: tuple[float, ...] = NOISE_LEVELS) -> SSIMSummary:
    """(S, n) SSIM values (rows = sigmas, columns = images, batches concatenated) → mean and 95 % t-interval."""
    values = ssim.double().cpu().numpy()
    if values.ndim != 2 or values.shape[0] != len(sigmas) or values.shape[1] < 2:
        raise CliplabError(f"need (S={len(sigmas)}, n ≥ 2) SSIM values for a confidence interval, got {values.shape}")
    n = values.shape[1]
    mean = values.mean(axis=1)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, df=n - 1) * values.std(axis=1, ddof=1) / np.sqrt(n)
    return SSIMSummary(sigmas=tuple(sigmas), mean=mean, low=mean - half, high=mean + half, n=n)
