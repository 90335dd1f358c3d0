"""D_v's raw material for a batch of images (mutual-knowledge steps 6–7): prompt every visual concept of both
branches, encode the prompts, and pick each concept's descriptors by optimal transport (and by plain top-k, the
ablation).

One encoder call per batch: concepts of one image with the same ellipse (``unique_prompts``) are prompted and
encoded once, which gives the same features as encoding every concept alone. The asset
`visual_concept_descriptors` and the explorer's on-the-fly path both call `describe_concepts`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from cliplab.mutual.transport import select_descriptors_batch
from cliplab.mutual.visual_prompts import PROMPTS, concept_features, concept_regions, fit_ellipse, visual_prompts


def unique_prompts(img_idx: np.ndarray, ellipses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (image, ellipse) pairs among K concepts: (indices of one of each, (K,) index into them).

    A concept's three prompts depend only on its image and its ellipse, so concepts with the same ellipse
    on the same image (a PCA and a k-means concept over the same patches, the usual case) share one set
    of prompts and one encoding; equal floats only, so the features are those of encoding every concept.
    """
    keys = np.column_stack([img_idx.astype(np.int64), np.ascontiguousarray(ellipses, dtype=np.float32).view(np.int32)])
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    return first, inverse.reshape(-1)



@dataclass
class ConceptDescriptors:
    """Per present (image, concept) pair q = 0..K−1, in (image, branch·L + concept) order."""

    image: np.ndarray  # (K,) image index b of pair q
    slot: np.ndarray  # (K,) branch j · L + concept c
    n_patches: np.ndarray  # (B, 2L) patches per concept (0: the concept is absent from the image)
    ellipses: np.ndarray  # (K, 5) (cx, cy, a, b, θ) in model-input pixels
    features: np.ndarray  # (K, d) mean of the three prompts' unit embeddings
    S: np.ndarray  # (B, 2L, |D|) float64 concept · descriptor cosine (0 for absent concepts)
    image_sim: np.ndarray  # (B, |D|) float64 image · descriptor cosine (the importance)
    picks: dict  # (branch index j, use_ot) → (B, L, k) descriptor indices, −1 padded
    prompts_encoded: int  # encoder inputs spent on prompts (3 per distinct ellipse)


def describe_concepts(encode, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, grids: list[np.ndarray],
                      grid: tuple[int, int], L: int, D_text: torch.Tensor, image_emb: torch.Tensor, sel: dict,
                      blur_kernel: int = 11, blur_sigma: float = 2.0, ablation: bool = True) -> ConceptDescriptors:
    """images: (B, 3, H, W) normalised model input; mean/std: (1, 3, 1, 1); grids: per branch (B, N) concept id per
    patch (−1 off the foreground), N = h·w of `grid`; D_text: (|D|, d) unit descriptor embeddings; image_emb: (B, d)
    unit image embeddings; encode: normalised images (n, 3, H, W) → (n, d); sel: `select_descriptors_batch` options
    (k, top, offset, threshold, temperature, n_iter). ablation: also the plain top-k picks (use_ot False)."""
    B, _, H, W = images.shape
    device = images.device
    pixels = (images * std + mean).clamp(0, 1)
    regions = np.concatenate([concept_regions(g, grid, L) for g in grids], axis=1)  # (B, 2L, h, w)
    n_patch = np.concatenate([(g[:, None, :] == np.arange(L)[None, :, None]).sum(-1) for g in grids], axis=1)
    present = torch.from_numpy(n_patch > 0).to(device)
    img_idx, slot = present.nonzero(as_tuple=True)
    regions = torch.from_numpy(regions).to(device)
    pixel_regions = F.interpolate(regions[img_idx, slot][:, None].float(), size=(H, W), mode="nearest")[:, 0] > 0.5
    ellipses = fit_ellipse(pixel_regions)  # (K, 5)
    first, inverse = unique_prompts(img_idx.cpu().numpy(), ellipses.cpu().numpy())
    first, inverse = torch.from_numpy(first).to(device), torch.from_numpy(inverse).to(device)
    blurred = gaussian_blur(pixels, [blur_kernel] * 2, [blur_sigma] * 2)
    prompts = visual_prompts(pixels[img_idx[first]], ellipses[first], blurred=blurred[img_idx[first]])
    with torch.inference_mode():
        feats = concept_features(lambda x: encode((x - mean) / std), prompts)[inverse]  # (K, d)
        image_sim = (image_emb @ D_text.T).double()  # (B, |D|)
        concept_emb = torch.zeros(B, len(grids) * L, D_text.shape[1], device=device)
        concept_emb[img_idx, slot] = feats
        S = (concept_emb @ D_text.T).double()  # (B, 2L, |D|)
    picks = {}
    for j in range(len(grids)):
        part = slice(j * L, (j + 1) * L)
        for ot in (True, False) if ablation else (True,):
            picks[(j, ot)] = select_descriptors_batch(S[:, part], present[:, part], image_sim, use_ot=ot, **sel).cpu().numpy()
    return ConceptDescriptors(img_idx.cpu().numpy(), slot.cpu().numpy(), n_patch, ellipses.cpu().numpy(),
                              feats.cpu().numpy(), S.cpu().numpy(), image_sim.cpu().numpy(), picks,
                              len(PROMPTS) * len(first))
