"""CLIP-Dissect (Oikarinen & Weng, ICLR 2023): a concept label for every neuron, scored by soft-WPMI.

A probing CLIP gives each probe image i a distribution over concepts, P_ic = softmax_c(a·cos(I_i, T_c)), a = 10
(concept texts are the bare words, as in the original `data/20k.txt` run). For neuron n, E_n is its top-k
(k = 100) most activating probe images, in decreasing activation, with weights w_j = 0.998 − (j/k)(0.998 − 0.97),
j = 0 … k − 1 (the original code's `p_in_examples`: the last weight is 0.97028, not 0.97). Then

    log p(c | E_n) = Σ_j log(w_j P_{i_j c} + 1 − w_j + 1e-7)
    log p(c)       = log( (1/M) Σ_n p(c | E_n) )     — the mean over the layer's M neurons, of probabilities
    score_nc       = log p(c | E_n) − λ log p(c),  λ = 1

(the original `similarity.soft_wpmi` computes log p(c) by logsumexp over neurons minus log M, i.e. the mean is
taken of p(c | E_n), not of its log). The label of neuron n is argmax_c score_nc; the score ↑ is its confidence.

Source: Trustworthy-ML-Lab/CLIP-dissect, `similarity.py` (soft_wpmi) and `utils.py` (activation hooks).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.errors import CliplabError
from cliplab.pixels import PixelEncoder

ALPHA = 10.0
TOP_K = 100
P_START = 0.998
P_END = 0.97
LAMBDA = 1.0
MIN_PROB = 1e-7
MAX_ELEMENTS = 2**26  # (k, neurons, concepts) block of gathered probabilities: 256 MB in float32


def concept_probabilities(
    image_embeddings: torch.Tensor, concept_embeddings: torch.Tensor, alpha: float = ALPHA
) -> torch.Tensor:
    """P: (N, C) = softmax over concepts of α·cos(I_i, T_c); image embeddings (N, D), concept embeddings (C, D)."""
    cos = F.normalize(image_embeddings.float(), dim=-1) @ F.normalize(concept_embeddings.float(), dim=-1).T
    return (alpha * cos).softmax(dim=1)


def example_weights(top_k: int = TOP_K, p_start: float = P_START, p_end: float = P_END) -> torch.Tensor:
    """w: (top_k,), w_j = p_start − (j / top_k)(p_start − p_end): the trust in the j-th most activating image."""
    return p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)


def soft_wpmi(
    activations: torch.Tensor,
    probs: torch.Tensor,
    top_k: int = TOP_K,
    lam: float = LAMBDA,
    p_start: float = P_START,
    p_end: float = P_END,
    min_prob: float = MIN_PROB,
    max_elements: int = MAX_ELEMENTS,
) -> torch.Tensor:
    """Scores (M, C) ↑ of every neuron–concept pair: log p(c | E_n) − λ log p(c) (module docstring).

    activations: (N, M) of the M neurons of one layer on the N probe images; probs P: (N, C) from
    `concept_probabilities`. With fewer than `top_k` probe images all N are used, the weights spanning the same
    range. Neurons are processed in blocks of (k, m, C) ≤ `max_elements` gathered probabilities.
    """
    n_images, n_neurons = activations.shape
    if probs.shape[0] != n_images:
        raise CliplabError(f"activations cover {n_images} probe images but P covers {probs.shape[0]}")
    k = min(top_k, n_images)
    probs = probs.float()
    top = activations.float().topk(k, dim=0).indices.to(probs.device)  # (k, M), most activating first
    w = example_weights(k, p_start, p_end).to(probs.device).view(k, 1, 1)
    block = max(1, max_elements // (k * probs.shape[1]))
    log_p_given = torch.cat(
        [
            torch.log(w * probs[top[:, s : s + block]] + (1 - w) + min_prob).sum(0)  # (m, C)
            for s in range(0, n_neurons, block)
        ]
    )
    log_p = torch.logsumexp(log_p_given, dim=0) - math.log(n_neurons)  # log of the mean of p(c | E_n)
    return log_p_given - lam * log_p


def label_neurons(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best score ↑ (M,), concept index (M,)): argmax over concepts of soft-WPMI scores (M, C)."""
    return scores.max(dim=1)


@torch.no_grad()
def neuron_activations(tower: nn.Module, images: torch.Tensor, layer: int) -> torch.Tensor:
    """Activations (B, width) of ViT block `layer`'s neurons: its output (the residual stream) at the CLS token.

    tower: an open_clip `VisionTransformer` fed normalised images, or a `PixelEncoder` fed [0, 1] pixels. The
    original hooks a block's output and keeps `output[:, 0]`, which is the CLS token only for a batch-first
    (B, L, D) output; a sequence-first tower (`transformer.batch_first` False) gives (L, B, D) and is read at [0].
    """
    visual = tower.visual if isinstance(tower, PixelEncoder) else tower
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None:
        raise CliplabError(
            f"neuron activations need a ViT image tower (transformer.resblocks), got {type(visual).__name__}"
        )
    seen: dict[str, torch.Tensor] = {}
    handle = blocks[layer].register_forward_hook(lambda _m, _args, out: seen.__setitem__("out", out))
    try:
        tower(images)
    finally:
        handle.remove()
    out = seen["out"]
    return (out[:, 0] if visual.transformer.batch_first else out[0]).float()
