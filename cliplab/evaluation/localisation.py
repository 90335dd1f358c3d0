"""Localisation of saliency maps against ground-truth object masks (Quantus style: source and direction per metric).

maps: (B, H, W) saliency, ≥ 0 (the saliency methods return [0, 1]); masks: (B, H, W) binary, same size.

- An EMPTY mask (no object pixel) is excluded from every metric — neither a hit nor a miss — and counted
  (`n_empty`); the per-image functions return NaN for it.
- A FULL mask (every pixel is object) is kept: it is a valid label (the object fills the frame) and every
  metric is defined on it, trivially for the pointing games (always a hit; energy 1).

`METRIC_DIRECTION` holds each metric's direction as data: "↑" higher is better, "↓" lower is better.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from sklearn.metrics import average_precision_score

from cliplab.errors import CliplabError

TORCHRAY_TOLERANCE = 15

METRIC_DIRECTION: dict[str, str] = {
    "pointing_game": "↑",
    "energy_pointing_game": "↑",
    "pixel_accuracy": "↑",
    "iou_foreground": "↑",
    "iou_background": "↑",
    "miou": "↑",
    "average_precision": "↑",
}


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = TORCHRAY_TOLERANCE) -> torch.Tensor:
    """Pointing game (Zhang et al., ECCV 2016, "Top-down Neural Attention by Excitation Backprop") ↑.

    (B, H, W), (B, H, W) → (B,) 1.0 hit, 0.0 miss, NaN for an empty mask.
    The point is the arg-max pixel (the first in row-major order on ties). As in TorchRay
    (`torchray.benchmark.pointing_game`, default 15 px) it is a hit when some mask pixel lies at a
    Euclidean distance d < tolerance from it (strict). tolerance 0 (or 1) means d = 0: the arg-max
    pixel itself must be an object pixel.
    """
    maps, masks = _checked(maps, masks)
    if tolerance < 0:
        raise CliplabError(f"tolerance is a distance in pixels, ≥ 0; got {tolerance}")
    b, h, w = maps.shape
    flat = maps.flatten(1).argmax(dim=1)
    row, col = (flat // w).view(b, 1, 1), (flat % w).view(b, 1, 1)
    rows = torch.arange(h, device=maps.device).view(1, h, 1)
    cols = torch.arange(w, device=maps.device).view(1, 1, w)
    near = (rows - row) ** 2 + (cols - col) ** 2 < max(tolerance, 1) ** 2
    hits = (masks & near).flatten(1).any(dim=1).double()
    return _empty_as_nan(hits, masks)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Energy-based pointing game (Wang et al., CVPR-W 2020, "Score-CAM") ↑: Σ_mask S / Σ S.

    (B, H, W), (B, H, W) → (B,) in [0, 1], NaN for an empty mask. A map with no energy (all zeros)
    scores 0: it puts none of it on the object.
    """
    maps, masks = _checked(maps, masks)
    if (maps < 0).any():
        raise CliplabError("the energy pointing game needs non-negative maps (energy), e.g. min-max scaled ones")
    energy = maps.double().flatten(1)
    inside = (energy * masks.flatten(1)).sum(1)
    total = energy.sum(1)
    share = torch.where(total > 0, inside / total.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(total))
    return _empty_as_nan(share, masks)


def soft_segmentation(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The map as a segmentation (Chefer et al., CVPR 2021, "Transformer Interpretability Beyond Attention
    Visualization"): S' = min-max scaled map (B, H, W), foreground = S' > mean(S') per image (B, H, W) bool.

    A constant map scales to 0 everywhere and has no foreground.
    """
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    scaled = (maps.double() - lo) / (hi - lo).double().clamp_min(torch.finfo(torch.float64).tiny)
    return scaled, scaled > scaled.mean(dim=(1, 2), keepdim=True)


def average_precision(
    maps: torch.Tensor, masks: torch.Tensor, average: Literal["micro", "macro"] = "micro"
) -> torch.Tensor:
    """Per-image average precision of the soft segmentation (Chefer et al., CVPR 2021) ↑.

    (B, H, W), (B, H, W) → (B,) float64, NaN for an empty mask. With S' the min-max scaled map, two
    score/label pairs per image: S' against the foreground and 1 − S' against the background
    (sklearn `average_precision_score`).
    average="micro" (default): one AP over both pairs pooled, exactly Chefer et al.'s `get_ap_scores`
        (the one-hot [background, foreground] target flattened with the [1 − S', S'] scores);
    average="macro": the mean of the two APs; for a full mask the background has no positive and only
        the foreground AP counts.
    """
    maps, masks = _checked(maps, masks)
    if average not in ("micro", "macro"):
        raise CliplabError(f"average must be 'micro' or 'macro', got {average!r}")
    scaled, _ = soft_segmentation(maps)
    scores = scaled.flatten(1).cpu().numpy()
    labels = masks.flatten(1).cpu().numpy()
    values = []
    for score, label in zip(scores, labels):
        if not label.any():
            values.append(math.nan)
        elif average == "micro":
            values.append(average_precision_score(np.concatenate([label, ~label]), np.concatenate([score, 1 - score])))
        else:
            pairs = [(label, score)] + ([(~label, 1 - score)] if not label.all() else [])
            values.append(float(np.mean([average_precision_score(y, s) for y, s in pairs])))
    return torch.tensor(values, dtype=torch.float64)


class LocalisationAccumulator:
    """Every localisation metric over a dataset, fed batch by batch.

    Pixel accuracy and the per-class IoUs are ACCUMULATED (Chefer et al.'s protocol): correct / labelled
    pixels and intersection / union summed over all images before dividing; mIoU = mean of the foreground
    and background IoU. The pointing games and AP are means over images. Empty masks are skipped and
    counted in `n_empty`.
    """

    def __init__(self, tolerance: int = TORCHRAY_TOLERANCE, ap_average: Literal["micro", "macro"] = "micro"):
        self.tolerance = tolerance
        self.ap_average = ap_average
        self.hits = self.scored = self.n_empty = 0
        self.energy_sum = self.ap_sum = 0.0
        self.correct = self.labelled = 0
        self.intersection = torch.zeros(2, dtype=torch.float64)  # [background, foreground]
        self.union = torch.zeros(2, dtype=torch.float64)

    def update(self, maps: torch.Tensor, masks: torch.Tensor) -> None:
        """Add a batch: maps (B, H, W) ≥ 0, masks (B, H, W) binary."""
        maps, masks = _checked(maps, masks)
        keep = masks.flatten(1).any(dim=1)
        self.n_empty += int((~keep).sum())
        maps, masks = maps[keep], masks[keep]
        if not len(maps):
            return
        self.scored += len(maps)
        self.hits += int(pointing_game(maps, masks, self.tolerance).sum())
        self.energy_sum += float(energy_pointing_game(maps, masks).sum())
        self.ap_sum += float(average_precision(maps, masks, self.ap_average).sum())
        _, foreground = soft_segmentation(maps)
        self.correct += int((foreground == masks).sum())
        self.labelled += masks.numel()
        for cls, (pred, truth) in enumerate(((~foreground, ~masks), (foreground, masks))):
            self.intersection[cls] += float((pred & truth).sum())
            self.union[cls] += float((pred | truth).sum())

    def result(self) -> dict[str, float]:
        """Metric name → value (keys of METRIC_DIRECTION), plus n_images (scored) and n_empty (skipped).

        A metric with nothing to average over (no scored image, or a class with an empty union) is NaN.
        """
        n = self.scored
        iou = torch.where(self.union > 0, self.intersection / self.union.clamp_min(1), torch.full_like(self.union, math.nan))
        return {
            "pointing_game": self.hits / n if n else math.nan,
            "energy_pointing_game": self.energy_sum / n if n else math.nan,
            "pixel_accuracy": self.correct / self.labelled if n else math.nan,
            "iou_foreground": float(iou[1]),
            "iou_background": float(iou[0]),
            "miou": float(iou.mean()),
            "average_precision": self.ap_sum / n if n else math.nan,
            "n_images": n,
            "n_empty": self.n_empty,
        }


def _checked(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps, masks as bool), after checking shapes (B, H, W) and that masks are binary."""
    if maps.dim() != 3 or maps.shape != masks.shape:
        raise CliplabError(
            f"maps and masks must both be (B, H, W) of the same size, got {tuple(maps.shape)} and {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        if not ((masks == 0) | (masks == 1)).all():
            raise CliplabError("masks must be binary (0/1 or bool)")
        masks = masks.bool()
    return maps, masks.to(maps.device)


def _empty_as_nan(values: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    return torch.where(masks.flatten(1).any(dim=1), values, torch.full_like(values, math.nan))
