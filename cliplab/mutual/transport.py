"""Describing each visual concept with descriptors through optimal transport (mutual-knowledge step 7).

S = concept features · descriptor text embeddings, (L, |D|). The reference keeps the descriptors
that every concept ranks in its top 500 and that resemble the whole image, then spreads them over
the concepts with Sinkhorn: P = exp(2.5·S), normalised 1000 times by rows then by columns. After the
last column step every descriptor carries mass 1 and, at convergence, every concept n/L (n the
candidates): the entropic OT plan Π from descriptors (a = 1_n) to concepts (b = n/L·1_L) for the
cost M = −2.5·Sᵀ at ε = 1. Each concept then takes its top 3 descriptors in Π, so a descriptor
claimed strongly by one concept ranks low for the others.
"""

from collections import Counter

import numpy as np
import ot
import ot.batch
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError

THRESHOLDS = ("mean", "percentile")
SINKHORN_METHODS = ("auto", "plain", "log")

# The plain (scaling) iteration is used while every finite log-affinity |temperature·S| is at most this:
# the kernel exp(±30) ≈ 1e±13, and the scalings u, v, each bounded by the marginals times exp(±2·30)
# (plus the sizes), stay near 1e±30, far from float64's overflow (1e308) and its subnormals (1e−308).
# Past it (a large temperature) the log-domain iteration is used. exp(2.5·S) with |S| ≤ 1 is e±2.5.
PLAIN_MAX_LOG_AFFINITY = 30.0


def reference_sinkhorn(S, temperature: float = 2.5, n_iter: int = 1000) -> torch.Tensor:
    """The reference's sinkhorn_knopp: exp(temperature·S) (L, n), n_iter × (rows, then columns) → (L, n)."""
    P = torch.exp(temperature * torch.as_tensor(S, dtype=torch.float64))
    for _ in range(n_iter):
        P = P / P.sum(dim=1, keepdim=True)
        P = P / P.sum(dim=0, keepdim=True)
    return P


def sinkhorn_assignment(S, temperature: float = 2.5, n_iter: int = 1000, method: str = "auto") -> torch.Tensor:
    """Transport plan Π (L, n) of n candidate descriptors onto L concepts, S: (L, n) similarities.

    Π = POT's log-domain Sinkhorn for a = 1_n (descriptors), b = n/L·1_L (concepts), M = −temperature·Sᵀ,
    ε = 1, transposed back; temperature multiplies S (the reference's 2.5). POT updates the target
    (concepts, the reference's rows) first and the source (descriptors, its columns) last, so running
    exactly n_iter iterations (stopThr = 0) reproduces the reference's iterates, not only its limit.
    Any scale of b gives the same Π, since every iteration ends on the descriptors' step; n/L is the
    one that balances the two masses, making Π at convergence the OT plan of that problem. Returns float64 on S's device; an empty S gives an empty plan.

    method: "log" is the log-domain iteration above; "plain" the same iterates as scalings of the kernel
    exp(temperature·S) (the reference's own form, ≈ 1e−15 apart per step); "auto" [default] takes "plain"
    when max |temperature·S| ≤ PLAIN_MAX_LOG_AFFINITY, where it cannot overflow or underflow, else "log".
    """
    S = torch.as_tensor(S, dtype=torch.float64)
    L, n = S.shape
    if L == 0 or n == 0:
        return torch.zeros_like(S)
    if _use_plain(method, temperature * S):
        a = torch.full((1, L), n / L, dtype=S.dtype, device=S.device)
        return _plain_sinkhorn(torch.exp(temperature * S)[None], a, torch.ones(1, n, dtype=S.dtype, device=S.device),
                               n_iter)[0]
    a = torch.ones(n, dtype=S.dtype, device=S.device)
    b = torch.full((L,), n / L, dtype=S.dtype, device=S.device)
    plan = ot.sinkhorn(a, b, -temperature * S.T, reg=1.0, method="sinkhorn_log",
                       numItermax=n_iter, stopThr=0.0, warn=False)
    return plan.T


def sinkhorn_assignment_batch(S, concept_mask, candidate_mask, temperature: float = 2.5,
                              n_iter: int = 1000, method: str = "auto") -> torch.Tensor:
    """sinkhorn_assignment for B images at once: S (B, L, n) padded, masks (B, L) and (B, n) bool.

    Returns Π (B, L, n), zero outside each image's real concepts × candidates. The padded rows and
    columns (plus one extra of each, so none is ever empty) form a block of their own, cut off from
    the real block by log-affinity −∞, so POT's batched solver (rows first, then columns, like the
    reference) solves each image's real block as if it were alone. method: as in sinkhorn_assignment
    (the plain iteration gives the cut-off blocks kernel 0, so they stay exactly 0).
    """
    S = torch.as_tensor(S, dtype=torch.float64)
    concept_mask = torch.as_tensor(concept_mask, dtype=torch.bool, device=S.device)
    candidate_mask = torch.as_tensor(candidate_mask, dtype=torch.bool, device=S.device)
    L, n = S.shape[1:]
    # an image without concepts or without candidates has nothing to transport
    rows = concept_mask & candidate_mask.any(dim=1, keepdim=True)
    cols = candidate_mask & concept_mask.any(dim=1, keepdim=True)
    rows, cols = F.pad(rows, (0, 1)), F.pad(cols, (0, 1))
    real = rows[:, :, None] & cols[:, None, :]
    padding = ~rows[:, :, None] & ~cols[:, None, :]
    log_K = F.pad(temperature * S, (0, 1, 0, 1))
    log_K = torch.where(real, log_K, torch.where(padding, 0.0, -torch.inf))
    # the padding block gets mass 1 on each side so its potentials stay bounded
    a = torch.where(rows, cols.sum(1, keepdim=True) / rows.sum(1, keepdim=True).clamp(min=1),
                    1 / (~rows).sum(1, keepdim=True)).to(S.dtype)
    b = torch.where(cols, 1.0, 1 / (~cols).sum(1, keepdim=True)).to(S.dtype)
    if _use_plain(method, torch.where(real, log_K, 0.0)):
        plan = _plain_sinkhorn(torch.exp(log_K), a, b, n_iter)
    else:
        plan = ot.batch.bregman_log_projection_batch(log_K, a, b, max_iter=n_iter, tol=0.0)["T"]
    return torch.where(real, plan, 0.0)[:, :L, :n]


def _use_plain(method: str, log_K: torch.Tensor) -> bool:
    """Whether to run the plain iteration on exp(log_K); log_K holds the finite log-affinities (0 elsewhere)."""
    if method not in SINKHORN_METHODS:
        raise CliplabError(f"unknown Sinkhorn method {method!r}; choose one of {SINKHORN_METHODS}")
    if method != "auto":
        return method == "plain"
    return log_K.numel() == 0 or float(log_K.abs().max()) <= PLAIN_MAX_LOG_AFFINITY


def _plain_sinkhorn(K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_iter: int) -> torch.Tensor:
    """diag(u) K diag(v) after n_iter × (u = a / K v, then v = b / Kᵀ u), from v = 1: K (B, L, n), a (B, L), b (B, n).

    The same iterates as the log-domain u = log a − LSE(log K + v), v = log b − LSE(log Kᵀ + u) (POT's
    order: rows, then columns), and as the reference's normalisations of P by rows then by columns.
    On CPU the loop runs in numpy: its stacked mat-vec products of these small blocks cost a third of
    torch's bmm, and the 2 × n_iter products are the whole cost.
    """
    B, L, n = K.shape
    if K.device.type == "cpu":
        K_np, a_np, b_np = (x.detach().contiguous().numpy() for x in (K, a.reshape(B, L, 1), b.reshape(B, 1, n)))
        v = np.ones((B, 1, n))
        u = a_np
        for _ in range(n_iter):
            u = a_np / (K_np @ v.reshape(B, n, 1))  # (B, L, 1)
            v = b_np / (u.reshape(B, 1, L) @ K_np)  # (B, 1, n)
        return torch.from_numpy(u * K_np * v)
    a, b = a.unsqueeze(-1), b.unsqueeze(-2)
    v = torch.ones_like(b)
    u = a
    for _ in range(n_iter):
        u = a / (K @ v.mT)
        v = b / (u.mT @ K)
    return u * K * v


def _in_top(S: torch.Tensor, top: int) -> torch.Tensor:
    """(B, L, D) bool: is the descriptor among its concept's `top` largest S (membership only).

    On CPU numpy's argpartition (introselect) finds the set 4× faster than torch's topk, which sorts;
    the set is the same (which of several exactly tied values at the boundary get in is unspecified
    by either).
    """
    if S.device.type == "cpu":
        top_k = torch.from_numpy(np.argpartition(-S.detach().numpy(), top - 1, axis=2)[..., :top])
    else:
        top_k = S.topk(top, dim=2, sorted=False).indices
    return torch.zeros_like(S, dtype=torch.bool).scatter_(2, top_k, True)


def descriptor_candidates(S, image_sim, top: int = 500, offset: float = 0.02,
                          threshold: str = "mean") -> torch.Tensor:
    """Indices into D (ascending) of the descriptors worth transporting; S: (L, |D|), image_sim: (|D|,).

    A candidate is in the top `top` of every concept, and its cosine with the whole image exceeds
    mean − offset over the candidates [reference, "mean"] or the median + offset ["percentile",
    the paper's "0.02 above the 50th percentile"].
    """
    if threshold not in THRESHOLDS:
        raise CliplabError(f"unknown candidate threshold {threshold!r}; choose one of {THRESHOLDS}")
    S = torch.as_tensor(S, dtype=torch.float64)
    image_sim = torch.as_tensor(image_sim, dtype=torch.float64, device=S.device)
    top_k = S.topk(min(top, S.shape[1]), dim=1).indices
    in_every_top = torch.zeros_like(S, dtype=torch.bool).scatter_(1, top_k, True).all(dim=0)
    candidates = in_every_top.nonzero().squeeze(1)
    if candidates.numel() == 0:
        return candidates
    sim = image_sim[candidates]
    cut = sim.mean() - offset if threshold == "mean" else sim.quantile(0.5) + offset
    return candidates[sim > cut]


def select_descriptors(S, image_sim, k: int = 3, use_ot: bool = True, top: int = 500,
                       offset: float = 0.02, threshold: str = "mean", temperature: float = 2.5,
                       n_iter: int = 1000, method: str = "auto") -> list[list[int]]:
    """D_v per concept: for each of the L rows of S (L, |D|), up to k descriptor indices, best first.

    use_ot: candidates (descriptor_candidates) ranked by the transport plan Π [reference];
    otherwise the plain top-k of S over the whole bank (the ablation). A concept gets fewer than k
    descriptors when fewer candidates survive, none when none do. With a single concept every
    descriptor's mass has one place to go, Π is flat, and S ranks the candidates instead.
    """
    S = torch.as_tensor(S, dtype=torch.float64)
    if not use_ot:
        return S.topk(min(k, S.shape[1]), dim=1).indices.tolist()
    if S.shape[0] == 0:
        return []
    candidates = descriptor_candidates(S, image_sim, top, offset, threshold)
    S_candidates = S[:, candidates]
    score = S_candidates if S.shape[0] == 1 else sinkhorn_assignment(S_candidates, temperature, n_iter, method)
    best = score.topk(min(k, candidates.numel()), dim=1).indices
    return candidates[best].tolist()


def assignment_entropy(selected) -> float:
    """Entropy (nats) of the concept→descriptor assignment of one image, the paper's Table A.2 measure.

    selected: per concept, the chosen descriptors (select_descriptors' output). The paper gives no
    formula; cliplab takes the empirical distribution of the descriptors over all L·k choices, so the
    entropy is ln(L·k) when no two concepts share a descriptor and falls as concepts collapse onto
    the same ones, which is the redundancy OT is there to remove (0 when nothing is selected).
    """
    counts = torch.tensor(list(Counter(d for concept in selected for d in concept).values()),
                          dtype=torch.float64)
    if counts.numel() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * p.log()).sum())


def select_descriptors_batch(S, concept_mask, image_sim, k: int = 3, use_ot: bool = True, top: int = 500,
                             offset: float = 0.02, threshold: str = "mean", temperature: float = 2.5,
                             n_iter: int = 1000, method: str = "auto") -> torch.Tensor:
    """select_descriptors for B images at once: (B, k·L) work in a few tensor operations.

    S: (B, L, |D|) concept–descriptor similarities (rows of absent concepts are ignored),
    concept_mask: (B, L) bool, image_sim: (B, |D|). Returns (B, L, k) int64 descriptor indices, best
    first, −1 where a concept has fewer than k (or is absent). Each image's candidates are gathered
    into a padded (B, L, n_max) block (n_max = the most candidates any image keeps) and transported
    together by sinkhorn_assignment_batch, so the result equals select_descriptors image by image.
    """
    if threshold not in THRESHOLDS:
        raise CliplabError(f"unknown candidate threshold {threshold!r}; choose one of {THRESHOLDS}")
    S = torch.as_tensor(S, dtype=torch.float64)
    concept_mask = torch.as_tensor(concept_mask, dtype=torch.bool, device=S.device)
    image_sim = torch.as_tensor(image_sim, dtype=torch.float64, device=S.device)
    B, L, D = S.shape
    out = torch.full((B, L, k), -1, dtype=torch.int64, device=S.device)
    if D == 0 or L == 0:
        return out
    if not use_ot:
        best = S.topk(min(k, D), dim=2).indices
        out[:, :, : best.shape[2]] = torch.where(concept_mask[:, :, None], best, -1)
        return out
    in_top = _in_top(S, min(top, D))
    in_every_top = (in_top | ~concept_mask[:, :, None]).all(dim=1) & concept_mask.any(dim=1, keepdim=True)
    sim = torch.where(in_every_top, image_sim, torch.nan)
    if threshold == "mean":
        cut = sim.nanmean(dim=1) - offset
    else:
        cut = sim.nanquantile(0.5, dim=1) + offset
    candidate = in_every_top & (image_sim > cut[:, None])
    n_candidates = candidate.sum(dim=1)
    n_max = int(n_candidates.max())
    if n_max == 0:
        return out
    # candidates first, in ascending descriptor order (a stable sort of "not a candidate")
    index = torch.sort((~candidate).to(torch.int8), dim=1, stable=True).indices[:, :n_max]  # (B, n_max)
    column_mask = torch.arange(n_max, device=S.device)[None, :] < n_candidates[:, None]
    S_c = torch.gather(S, 2, index[:, None, :].expand(B, L, n_max))
    plan = sinkhorn_assignment_batch(S_c, concept_mask, column_mask, temperature, n_iter, method)
    single = (concept_mask.sum(dim=1) == 1)[:, None, None]
    score = torch.where(single, S_c, plan).masked_fill(~column_mask[:, None, :], -torch.inf)
    k_eff = min(k, n_max)
    rank = score.topk(k_eff, dim=2).indices  # (B, L, k_eff)
    picked = torch.gather(index[:, None, :].expand(B, L, n_max), 2, rank)
    valid = concept_mask[:, :, None] & (torch.arange(k_eff, device=S.device)[None, None, :] < n_candidates[:, None, None])
    out[:, :, :k_eff] = torch.where(valid, picked, -1)
    return out
