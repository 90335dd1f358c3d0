"""Replacement evaluation of TextSpan (Gandelsman et al., ICLR 2024, Sec. 4.2, Fig. 3).

The unit image embedding is a sum of direct contributions (``cliplab.heads.decomposition``):

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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from cliplab.errors import CliplabError
from cliplab.heads.textspan import RankOption, _gram_eigh, span_basis, text_span_heads


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
    """TextSpan of every spanned head plus the replacement accuracies, for one text bank.

    ks: the k values (texts per head) evaluated, ascending.
    top1: (len(ks),) zero-shot top-1 with spanned heads → TextSpan reconstruction with k texts.
    baseline_top1: exact embeddings (every part as it is).
    ablated_top1: earlier layers mean-ablated, spanned heads exact (the ceiling of the curve).
    indices, scores: (Hh, max k) TextSpan picks and their std scores of every spanned head, in the order
        the head chunks were given.
    ranks: (Hh,) the r each spanned head's TextSpan used (per head with r = "numerical").
    """

    ks: tuple[int, ...]
    top1: tuple[float, ...]
    baseline_top1: float
    ablated_top1: float
    indices: torch.Tensor
    scores: torch.Tensor
    ranks: torch.Tensor | None = None


def greedy_reconstructions(C: torch.Tensor, T: torch.Tensor, indices: torch.Tensor, ks: Sequence[int],
                           rank: int | torch.Tensor) -> dict[int, torch.Tensor]:
    """TextSpan's reconstruction R(k) for several k from one greedy run: {k: (Hh, n, d)}.

    C: (Hh, n, d) contributions, T: (M, d) texts, indices: (Hh, ≥ max k) the run's picks, rank: r as used,
    one int or (Hh,) per head (the run's ``ranks``).
    The greedy's deflated texts are the Gram–Schmidt orthogonalisation (in pick order) of the picked texts
    projected on span(V_r), and each step removes C's component along one of them, so
    R(k) = μ_C + (C − μ_C) V_rᵀ Q_k Q_kᵀ V_r with Q_k an orthonormal basis of the first k projected picks
    (in V_r coordinates). Equals ``text_span_heads(C, T, k).reconstruction`` up to rounding.
    """
    C = C.to(torch.float32)
    ranks = torch.as_tensor(rank, dtype=torch.int64).expand(C.shape[0])
    basis = span_basis(_gram_eigh(C)[1], ranks)  # V_r (Hh, r, d), as textspan
    mean = C.mean(1, keepdim=True)
    coords = (C - mean) @ basis.mT  # (Hh, n, r)
    picked = T.to(torch.float32)[indices] @ basis.mT  # (Hh, k_max, r) projected picks in span coordinates
    out = {}
    for k in ks:
        if k == 0:
            out[k] = mean.expand_as(C)
            continue
        q = torch.linalg.qr(picked[:, :k].mT)[0]  # (Hh, r, k)
        out[k] = mean + ((coords @ q) @ q.mT) @ basis
    return out


def replacement_curves(
    kept: torch.Tensor,
    earlier: torch.Tensor,
    head_chunks: Iterable[torch.Tensor],
    banks: Mapping[str, torch.Tensor],
    weights: torch.Tensor,
    labels: torch.Tensor,
    ks: Sequence[int] = (1, 2, 5, 10, 20),
    r: RankOption = "numerical",
    head_dim: int | None = None,
) -> dict[str, ReplacementCurve]:
    """Replacement accuracy per k (module docstring) for each text bank: {bank: curve}.

    kept: (n, d) ln_pre + Σ MLP terms. earlier: (n, d) Σ of the earlier layers' attention (mean-ablated).
    head_chunks: the spanned heads as (Hh_i, n, d) tensors, e.g. one layer at a time (each chunk is one
        batched TextSpan per bank; the chunks are never held together).
    banks: name → (M, d) unit text embeddings T. weights: (K, d) class classifier W. labels: (n,).
    ks: texts per head; 0 allowed (heads at their mean). r, head_dim: as in ``text_span_heads``.
    One greedy run of max k per chunk and bank; the smaller k come from its picks
    (``greedy_reconstructions``).
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 0:
        raise CliplabError(f"ks must be non-negative texts-per-head counts; got {ks}")
    if not banks:
        raise CliplabError("no text banks were given")
    kept, earlier = kept.to(torch.float32), earlier.to(torch.float32)
    if kept.shape != earlier.shape:
        raise CliplabError(f"kept {tuple(kept.shape)} and earlier {tuple(earlier.shape)} differ in shape")
    k_max = ks[-1]
    exact = torch.zeros_like(kept)  # Σ_h c_h
    replaced = {b: {k: torch.zeros_like(kept) for k in ks} for b in banks}  # Σ_h R_h(k)
    picks = {b: ([], [], []) for b in banks}
    n_chunks = 0
    for chunk in head_chunks:
        stored, chunk = chunk, chunk.to(torch.float32)  # the stored dtype sets r = "numerical"'s noise level
        if chunk.shape[1:] != kept.shape:
            raise CliplabError(f"head chunk {tuple(chunk.shape)} does not match (Hh, n, d) = (·, {kept.shape[0]}, {kept.shape[1]})")
        n_chunks += 1
        exact += chunk.sum(0)
        for bank, texts in banks.items():
            if k_max == 0:
                replaced[bank][0] += chunk.mean(1).sum(0)
                continue
            result = text_span_heads(stored, texts, k=k_max, r=r, head_dim=head_dim)
            picks[bank][0].append(result.indices)
            picks[bank][1].append(result.scores)
            picks[bank][2].append(result.ranks)
            for k, recon in greedy_reconstructions(chunk, texts, result.indices, ks, result.ranks).items():
                replaced[bank][k] += recon.sum(0)
    if not n_chunks:
        raise CliplabError("no spanned heads were given")
    ablated = kept + earlier.mean(0, keepdim=True)
    baseline = zero_shot_top1(kept + earlier + exact, weights, labels)
    ceiling = zero_shot_top1(ablated + exact, weights, labels)
    return {bank: ReplacementCurve(
        ks=ks, top1=tuple(zero_shot_top1(ablated + replaced[bank][k], weights, labels) for k in ks),
        baseline_top1=baseline, ablated_top1=ceiling,
        indices=torch.cat(picks[bank][0]) if picks[bank][0] else torch.empty(0, 0, dtype=torch.int64),
        scores=torch.cat(picks[bank][1]) if picks[bank][1] else torch.empty(0, 0),
        ranks=torch.cat(picks[bank][2]) if picks[bank][2] else torch.empty(0, dtype=torch.int64),
    ) for bank in banks}


def replacement_curve(kept, earlier, head_chunks, texts, weights, labels, ks=(1, 2, 5, 10, 20), r="numerical",
                      head_dim=None) -> ReplacementCurve:
    """``replacement_curves`` for one bank T (M, d)."""
    return replacement_curves(kept, earlier, head_chunks, {"bank": texts}, weights, labels, ks, r, head_dim)["bank"]


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
