"""Pixel space: a CLIP image tower as a function of [0, 1] pixels, with `Normalize` inside the forward.

Attacks, adversarial fine-tuning and saliency all perturb or differentiate the image the camera saw, not the
normalised tensor: an ε of 4/255 on a normalised tensor is an ε of ≈ 4/255 · σ_c ≈ 1.1/255 in pixels (the
OpenAI σ ≈ 0.27), a threat model 3.7× smaller than the one reported. So the model's val transform is split
into "to pixels" (resize, crop, to-tensor) and its final `Normalize`, and the latter moves into the forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cliplab.errors import CliplabError


class PixelEncoder(nn.Module):
    """f(x) = visual((x − μ) / σ): pixels x (B, 3, H, W) in [0, 1] → image embedding (B, D), not normalised.

    `visual` is an open_clip image tower (`model.visual`); it is the module that is trained or attacked.
    """

    def __init__(self, visual: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.visual = visual
        self.register_buffer("mean", torch.tensor(tuple(mean), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(tuple(std), dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels - self.mean.to(pixels.dtype)) / self.std.to(pixels.dtype)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.visual(self.normalize(pixels))


def split_preprocess(preprocess) -> tuple[object, tuple[float, ...], tuple[float, ...]]:
    """(to_pixels, mean, std) from an open_clip val transform (a torchvision `Compose` ending in `Normalize`).

    `to_pixels` is every step but the last: PIL image → (3, H, W) float tensor in [0, 1].
    """
    from torchvision import transforms as T

    steps = getattr(preprocess, "transforms", None)
    if not steps or not isinstance(steps[-1], T.Normalize):
        raise CliplabError(
            f"the model's preprocessing must end in Normalize to be split into pixels + normalisation, got {preprocess!r}"
        )
    norm = steps[-1]
    return T.Compose(list(steps[:-1])), tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)


def mask_transform(preprocess):
    """The geometric steps of a val transform (resize, crop) with nearest-neighbour resampling: PIL mask → PIL
    mask aligned pixel for pixel with what `preprocess` makes of the image (labels must not be interpolated)."""
    from torchvision import transforms as T

    steps = []
    for step in getattr(preprocess, "transforms", []):
        if isinstance(step, T.Resize):
            steps.append(T.Resize(step.size, interpolation=T.InterpolationMode.NEAREST, max_size=step.max_size,
                                  antialias=False))
        elif isinstance(step, T.CenterCrop):
            steps.append(T.CenterCrop(step.size))
        elif type(step).__name__ in GEOMETRIC_UNMIRRORED:
            raise CliplabError(f"cannot mirror the preprocessing step {step!r} on masks")
        # colour-mode, to-tensor and Normalize steps do not move pixels
    return T.Compose(steps)


GEOMETRIC_UNMIRRORED = {"ResizeKeepRatio", "CenterCropOrPad", "RandomResizedCrop", "RandomCrop"}
