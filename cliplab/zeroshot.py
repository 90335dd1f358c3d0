"""Zero-shot classification: template-averaged class embeddings and top-k predictions (CLIP, Radford et al. 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def class_embeddings(encode_text, tokenizer, class_names: list[str], templates: list[str], batch_size: int = 1024) -> torch.Tensor:
    """W: (K, D). For each class, the mean of the unit text embeddings of all templates, re-normalised.

    `encode_text(tokens) -> (n, D)`; all K·T prompts are encoded in batches of `batch_size`.
    """
    prompts = [t.format(c) for c in class_names for t in templates]
    tokens = tokenizer(prompts)
    chunks = [F.normalize(encode_text(tokens[i : i + batch_size]).float(), dim=-1) for i in range(0, len(prompts), batch_size)]
    per_prompt = torch.cat(chunks).view(len(class_names), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1)


def top_k(image_embeddings: torch.Tensor, class_weights: torch.Tensor, k: int = 5, logit_scale: float = 100.0):
    """Top-k classes per image. e: (B, D) unit, W: (K, D) unit → (indices (B, k), softmax probs (B, k), cosines (B, k))."""
    cos = image_embeddings.float() @ class_weights.float().T  # (B, K)
    probs = (logit_scale * cos).softmax(dim=-1)
    k = min(k, class_weights.shape[0])
    p, idx = probs.topk(k, dim=-1)
    return idx, p, cos.gather(1, idx)
