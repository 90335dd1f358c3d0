"""Evaluating multimodal concepts by removing and inserting them (the paper's Table 1).

A concept l of an image is ranked by (image ↔ visual concept similarity) × (image ↔ its descriptors'
mean similarity). Deletion blurs the concepts' regions away one at a time in that order; Insertion
starts from the blurred image and restores them in that order. Each step is encoded and scored by
the predicted class's score (cosine ×2.5, the reference's scale), giving L+1 points; the areas are
their means. AccDrop / AccInc are the same with top-1 accuracy over the dataset. The paper gives no
code; cliplab's reading: AccDrop = acc₀ − mean accuracy after each deletion step, AccInc = mean
accuracy after each insertion step − accuracy of the fully blurred image. A seeded random concept
order is the control every number is compared against.
"""

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

SCALE = 2.5


def concept_ranking(concept_sim: np.ndarray, descriptor_sim: list[list[float]]) -> np.ndarray:
    """Order of an image's concepts, most important first.

    concept_sim: (L,) cos(image, visual concept l); descriptor_sim: per concept the cosines of the
    image with its descriptors (empty → 0). Score_l = concept_sim_l · mean(descriptor_sim_l); ties
    keep concept order.
    """
    mean_desc = np.array([np.mean(d) if len(d) else 0.0 for d in descriptor_sim])
    return np.argsort(-(np.asarray(concept_sim) * mean_desc), kind="stable")


def step_masks(regions: torch.Tensor, order: list[int] | np.ndarray) -> torch.Tensor:
    """Cumulative union of concept regions in `order`: (L, H, W) bool → (L+1, H, W), step 0 empty."""
    steps = [torch.zeros_like(regions[0])]
    for l in order:
        steps.append(steps[-1] | regions[l])
    return torch.stack(steps)


def deletion_insertion_images(image: torch.Tensor, blurred: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """(3, H, W) image, its blur, (T, H, W) step masks → (2, T, 3, H, W): deletion then insertion.

    Deletion step t: the image with the first t concepts blurred; insertion step t: the blur with the
    first t concepts restored.
    """
    m = masks[:, None]
    deletion = torch.where(m, blurred[None], image[None])
    insertion = torch.where(m, image[None], blurred[None])
    return torch.stack([deletion, insertion])


def blur(images: torch.Tensor, kernel: int, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, 3, H, W): what "removing" a concept means here (not zeroing it)."""
    return gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def pad_last(curves: list[np.ndarray], length: int) -> np.ndarray:
    """Curves of different lengths (images with fewer concepts) held at their last value → (n, length)."""
    return np.stack([np.concatenate([c, np.full(length - len(c), c[-1])]) for c in curves])


def summarise(scores: list[np.ndarray], correct: list[np.ndarray], kind: str) -> dict:
    """Area and accuracy metrics of deletion or insertion curves over a dataset.

    scores / correct: per image the (L_i+1,) predicted-class scores and top-1 hits after each step.
    Returns the mean curve, its area (mean of the points, then averaged over images), and AccDrop
    (deletion) or AccInc (insertion).
    """
    length = max(len(c) for c in scores)
    s, a = pad_last(scores, length), pad_last([c.astype(float) for c in correct], length)
    out = {"auc": float(s.mean(axis=1).mean()), "curve": s.mean(axis=0), "accuracy_curve": a.mean(axis=0)}
    if kind == "deletion":
        out["acc_drop"] = float(a[:, 0].mean() - a[:, 1:].mean()) if length > 1 else 0.0
    else:
        out["acc_inc"] = float(a[:, 1:].mean() - a[:, 0].mean()) if length > 1 else 0.0
    return out
