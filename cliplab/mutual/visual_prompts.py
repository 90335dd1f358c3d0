"""Visual prompting of each visual concept (mutual-knowledge step 6).

A concept of an image is the set of its foreground patches with one concept id. The reference takes
the concept's largest contour on the pixel grid, fits an ellipse to it (the paper says "circle") and
draws three prompts that point CLIP at the region: (a) a red outline of the ellipse, (b) the image
turned grey outside the filled ellipse, then the outline, (c) the image blurred (11×11 Gaussian,
σ = 2, OpenCV's σ for that kernel) outside, then the outline. Each prompt is encoded, L2-normalised,
and the three are averaged (not re-normalised) into the concept's feature.

Everything works on a batch of K (image, concept) pairs at once, on the images' device. The ellipse
is the one with the same first and second moments as the concept's largest 8-connected region (the
moment fit of a filled region, where the reference least-squares-fits its contour points with
OpenCV): both give the region's centre and orientation, and the moment fit needs no contour tracing,
so K regions fit in one tensor expression. Images are in [0, 1], (K, 3, H, W).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from cliplab.mutual.cleanup import largest_components

RED = (1.0, 0.0, 0.0)
PROMPTS = ("red_outline", "reverse_grayscale", "reverse_blur")


def concept_regions(concepts: np.ndarray, grid: tuple[int, int], n_concepts: int) -> np.ndarray:
    """Per image and concept id, the concept's largest 8-connected region on the patch grid.

    concepts: (B, N) int concept id per patch, −1 off the foreground; N = h·w. Returns (B, L, h, w)
    bool with L = n_concepts; an id the image does not use gives an empty region.
    """
    concepts = np.asarray(concepts)
    b, n = concepts.shape
    one_hot = concepts[:, None, :] == np.arange(n_concepts)[None, :, None]  # (B, L, N)
    regions = largest_components(one_hot.reshape(b * n_concepts, *grid), min_second=n + 1)
    return regions.reshape(b, n_concepts, *grid)


def fit_ellipse(region: torch.Tensor) -> torch.Tensor:
    """Ellipse with the region's centre and second moments: (K, H, W) bool → (K, 5) float.

    Columns: centre x, centre y (pixels, from the top-left pixel's centre), semi-axes a ≥ b
    (2·√eigenvalue of the pixel covariance, plus the ½-pixel variance 1/12 of a pixel's own extent,
    so a single pixel is a circle of radius ≈ 0.58), and θ, the angle of the a-axis from +x
    (radians, y down). An empty region gives all zeros.
    """
    h, w = region.shape[1:]
    m = region.to(torch.float64)
    ys = torch.arange(h, dtype=torch.float64, device=region.device)
    xs = torch.arange(w, dtype=torch.float64, device=region.device)
    mass = m.sum(dim=(1, 2)).clamp(min=1.0)
    px, py = m.sum(dim=1), m.sum(dim=2)  # (K, W), (K, H) marginals
    cx, cy = (px * xs).sum(1) / mass, (py * ys).sum(1) / mass
    dx, dy = xs[None, :] - cx[:, None], ys[None, :] - cy[:, None]
    sxx = (px * dx**2).sum(1) / mass + 1 / 12
    syy = (py * dy**2).sum(1) / mass + 1 / 12
    sxy = (m * dy[:, :, None] * dx[:, None, :]).sum(dim=(1, 2)) / mass
    mid, half = (sxx + syy) / 2, torch.sqrt(((sxx - syy) / 2) ** 2 + sxy**2)
    a, b = 2 * torch.sqrt(mid + half), 2 * torch.sqrt((mid - half).clamp(min=0))
    theta = 0.5 * torch.atan2(2 * sxy, sxx - syy)
    params = torch.stack([cx, cy, a, b, theta], dim=1)
    return torch.where(region.flatten(1).any(1, keepdim=True), params, 0.0).to(torch.float32)


def ellipse_masks(ellipses: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Filled ellipse and its 1-pixel outline on an (H, W) grid: (K, 5) → two (K, H, W) bool.

    The outline is the filled ellipse's inner boundary: filled pixels with a 4-neighbour outside it
    (the part of the ellipse outside the image is not drawn). Semi-axes below half a pixel are
    raised to half a pixel so every ellipse covers its centre pixel.
    """
    h, w = size
    cx, cy, a, b, theta = (ellipses[:, i, None, None].to(torch.float64) for i in range(5))
    ys = torch.arange(h, dtype=torch.float64, device=ellipses.device)[None, :, None]
    xs = torch.arange(w, dtype=torch.float64, device=ellipses.device)[None, None, :]
    dx, dy = xs - cx, ys - cy
    u = dx * torch.cos(theta) + dy * torch.sin(theta)
    v = -dx * torch.sin(theta) + dy * torch.cos(theta)
    filled = (u / a.clamp(min=0.5)) ** 2 + (v / b.clamp(min=0.5)) ** 2 <= 1.0
    filled &= (ellipses[:, 2] > 0)[:, None, None]
    padded = F.pad(filled[:, None].float(), (1, 1, 1, 1), value=1.0)  # outside the frame is not a border
    p = padded[:, 0]
    all_neighbours_in = (p[:, :-2, 1:-1] * p[:, 2:, 1:-1] * p[:, 1:-1, :-2] * p[:, 1:-1, 2:]) > 0
    return filled, filled & ~all_neighbours_in


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """(K, 3, H, W) → (K, 3, H, W), ITU-R 601 luma (OpenCV's RGB2GRAY) in every channel."""
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    return (images * weights[None, :, None, None]).sum(1, keepdim=True).expand_as(images)


def visual_prompts(images: torch.Tensor, ellipses: torch.Tensor, blur_kernel: int = 11,
                   blur_sigma: float = 2.0, blurred: torch.Tensor | None = None) -> torch.Tensor:
    """The three prompts of step 6 for K (image, concept) pairs: (K, 3, H, W) in [0, 1] → (K, 3, 3, H, W).

    Along dim 1: red outline, reverse-grayscale, reverse-blur (PROMPTS order); the outline is drawn
    last on all three. `blurred`: the images already blurred (callers with several concepts per image
    blur each image once); otherwise computed here.
    """
    filled, outline = ellipse_masks(ellipses, images.shape[-2:])
    inside, line = filled[:, None], outline[:, None]
    red = torch.tensor(RED, dtype=images.dtype, device=images.device)[None, :, None, None]
    gray = torch.where(inside, images, grayscale(images))
    if blurred is None:
        blurred = gaussian_blur(images, [blur_kernel, blur_kernel], [blur_sigma, blur_sigma])
    blurred = torch.where(inside, images, blurred)
    prompts = torch.stack([images, gray, blurred], dim=1)
    return torch.where(line[:, None], red[:, None], prompts)


def concept_features(encode_image, prompts: torch.Tensor) -> torch.Tensor:
    """(K, P, 3, H, W) prompts (already normalised for the model) → (K, C) mean of the P unit embeddings.

    All K·P images go through `encode_image` in one call; the mean is not re-normalised (reference).
    """
    k, p = prompts.shape[:2]
    emb = F.normalize(encode_image(prompts.flatten(0, 1)).float(), dim=-1)
    return emb.view(k, p, -1).mean(dim=1)
