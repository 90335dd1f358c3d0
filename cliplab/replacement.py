"""Replacement evaluation of TextSpan (Gandelsman et al., ICLR 2024, Sec. 4.2, Fig. 3).

The unit image embedding is a sum of direct contributions (``cliplab.decomposition``):

    e = kept + earlier + Σ_h c_h

kept: (n, d) the ln_pre term and every MLP term (kept as they are);
earlier: (n, d) the attention of the layers before the spanned ones (whole layers or heads), replaced
    by its dataset mean (mean ablation);
c_h: (n, d) head h of the spanned (last) layers, replaced by its TextSpan reconstruction R_h with k texts.

Zero-shot top-1 of ê = kept + mean(earlier) + Σ_h R_h(k) with the class classifier W (K, d) is reported per
k; it rises towards ``ablated_top1`` (spanned heads exact) and the exact ``baseline_top1`` as k grows. The
arg-max over classes does not depend on ‖ê‖, so ê is not re-normalised. k = 0 means every spanned head at
its mean (R_h = μ_h).
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from cliplab.errors import CliplabError
from cliplab.textspan import REFERENCE_RANK, text_span_heads


def zero_shot_top1(embeddings: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 of arg-max_c e·w_c: embeddings (n, d), class weights W (K, d), labels (n,) int class indices."""
    if embeddings.shape[0] != labels.shape[0]:
        raise CliplabError(f"{embeddings.shape[0]} embeddings but {labels.shape[0]} labels")
    if embeddings.shape[1] != weights.shape[1]:
        raise CliplabError(f"embedding dim {embeddings.shape[1]} ≠ classifier dim {weights.shape[1]}")
    pred = (embeddings.to(torch.float32) @ weights.to(torch.float32).T).argmax(1)
    return float((pred == labels.to(pred.device)).to(torch.float32).mean())


@dataclass(frozen=True)
class ReplacementCurve:
    """TextSpan of every spanned head plus the replacement accuracies.

    ks: the k values (texts per head) evaluated, ascending.
    top1: (len(ks),) zero-shot top-1 with spanned heads → TextSpan reconstruction with k texts.
    baseline_top1: exact embeddings (every part as it is).
    ablated_top1: earlier layers mean-ablated, spanned heads exact (the ceiling of the curve).
    indices, scores: (Hh, max k) TextSpan picks and their std scores of every spanned head, in the order
        the head chunks were given.
    """

    ks: tuple[int, ...]
    top1: tuple[float, ...]
    baseline_top1: float
    ablated_top1: float
    indices: torch.Tensor
    scores: torch.Tensor


def replacement_curve(
    kept: torch.Tensor,
    earlier: torch.Tensor,
    head_chunks: Iterable[torch.Tensor],
    texts: torch.Tensor,
    weights: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 5, 10, 20),
    r: int | Literal["head_dim+3"] = REFERENCE_RANK,
    head_dim: int | None = None,
) -> ReplacementCurve:
    """Replacement accuracy per k (module docstring).

    kept: (n, d) ln_pre + Σ MLP terms. earlier: (n, d) Σ of the earlier layers' attention (mean-ablated).
    head_chunks: the spanned heads as (Hh_i, n, d) tensors, e.g. one layer at a time (each chunk is one
        batched TextSpan; the chunks are never held together).
    texts: (M, d) unit text embeddings T of the bank. weights: (K, d) class classifier W. labels: (n,).
    ks: texts per head; 0 allowed (heads at their mean). r, head_dim: as in ``text_span_heads``.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 0:
        raise CliplabError(f"ks must be non-negative texts-per-head counts; got {ks}")
    kept, earlier = kept.to(torch.float32), earlier.to(torch.float32)
    if kept.shape != earlier.shape:
        raise CliplabError(f"kept {tuple(kept.shape)} and earlier {tuple(earlier.shape)} differ in shape")
    k_max = ks[-1]
    exact = torch.zeros_like(kept)  # Σ_h c_h
    replaced = {k: torch.zeros_like(kept) for k in ks}  # Σ_h R_h(k)
    indices, scores = [], []
    for chunk in head_chunks:
        chunk = chunk.to(torch.float32)
        if chunk.shape[1:] != kept.shape:
            raise CliplabError(f"head chunk {tuple(chunk.shape)} does not match (Hh, n, d) = (·, {kept.shape[0]}, {kept.shape[1]})")
        exact += chunk.sum(0)
        for k in ks:
            if k == 0:
                replaced[k] += chunk.mean(1, keepdim=True).sum(0)
                continue
            result = text_span_heads(chunk, texts, k=k, r=r, head_dim=head_dim)
            replaced[k] += result.reconstruction.sum(0)
            if k == k_max:
                indices.append(result.indices)
                scores.append(result.scores)
    if not indices and k_max > 0:
        raise CliplabError("no spanned heads were given")
    ablated = kept + earlier.mean(0, keepdim=True)
    return ReplacementCurve(
        ks=ks,
        top1=tuple(zero_shot_top1(ablated + replaced[k], weights, labels) for k in ks),
        baseline_top1=zero_shot_top1(kept + earlier + exact, weights, labels),
        ablated_top1=zero_shot_top1(ablated + exact, weights, labels),
        indices=torch.cat(indices) if indices else torch.empty(0, 0, dtype=torch.int64),
        scores=torch.cat(scores) if scores else torch.empty(0, 0),
    )


def plot_curve(curves, title: str) -> bytes:
    """PNG of top-1 against texts per head, one line per bank, with the ablated ceiling and the exact baseline.

    curves: polars frame with columns bank, k, top1, baseline_top1, ablated_top1.
    """
    from cliplab.plots import _figure, _png

    fig, ax = _figure(5, 3.2)
    for i, (bank, group) in enumerate(curves.sort("k").group_by("bank", maintain_order=True)):
        colour = f"C{i}"
        ax.plot(group["k"], group["top1"], marker="o", color=colour, label=f"{bank[0]} (TextSpan)")
        ax.axhline(group["ablated_top1"][0], color=colour, ls=":", lw=1)
    ax.axhline(curves["baseline_top1"][0], color="k", ls="--", lw=1, label="exact embedding")
    ax.set(xlabel="texts per head (k)", ylabel="zero-shot top-1", title=title, ylim=(0, 1))
    ax.legend(fontsize=7)
    return _png(fig)
