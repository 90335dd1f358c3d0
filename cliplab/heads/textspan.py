"""TextSpan (Gandelsman et al., ICLR 2024, Sec. 4.1): describe one head's output space with k texts.

C ∈ R^{n×d} holds one head's token-summed contributions over n images, T ∈ R^{M×d} the unit text
embeddings of a description bank. Steps (reference ``replace_with_iterative_removal``):

1. V_r = top-r right singular vectors of the *uncentred* C (computed as eigenvectors of CᵀC); r is
   fixed (80, the reference; "head_dim+3") or, with r = "numerical" [default], the head's numerical
   rank (``numerical_ranks``), so span(V_r) holds no rounding-noise direction.
2. T ← T V_rᵀ V_r (texts projected onto span(V_r), not re-normalised).
3. μ_C = mean row of C; C ← C − μ_C; reconstruction R = μ_C for every row.
4. k times: s_j = std over images of C·t_j; j* = argmax s_j; coef = C t/‖t‖² (t = t_{j*});
   R += coef ⊗ t; C −= coef ⊗ t; every text t_j −= (t_j·t/‖t‖²) t (t itself becomes 0).

Every text after step 2, and every deflation of it, lies in span(V_r), and so does every update of
C that matters for the scores. The loop therefore runs in the r coordinates of that span
(C_r = C V_rᵀ, T_r = T V_rᵀ): C·t = C_r·t_r and ‖t‖ = ‖t_r‖ exactly, and R = μ_C + R_r V_r. The std
comes from the covariance C_rᵀC_r, so no (n × M) score matrix is ever formed.
"""

from dataclasses import dataclass
from typing import Literal

import torch

from cliplab.errors import CliplabError

REFERENCE_RANK = 80
RankOption = int | Literal["head_dim+3", "numerical"]
# r = "numerical": σ_i counts when σ_i > NOISE_FACTOR · eps · ‖C‖_F (√n + √d) / √(nd) (see numerical_ranks)
NOISE_FACTOR = 10.0


@dataclass(frozen=True)
class TextSpanResult:
    """Greedy TextSpan output; a leading head axis (Hh) when produced by ``text_span_heads``.

    indices: (k,) or (Hh, k) int64 rows of T in pick order (rank = position).
    scores: (k,) or (Hh, k) std over images of C·t_j at the step t_j was picked (unbiased, as the
        reference's ``torch.std``), the quantity the greedy maximises.
    reconstruction: (n, d) or (Hh, n, d) R = μ_C + Σ_steps coef ⊗ t, a real buffer (rows differ).
    ranks: () or (Hh,) int64 the r each head used (dim of span(V_r)); per head with r = "numerical".
    """

    indices: torch.Tensor
    scores: torch.Tensor
    reconstruction: torch.Tensor
    ranks: torch.Tensor | None = None


def text_span(
    C: torch.Tensor,
    T: torch.Tensor,
    k: int = 20,
    r: RankOption = "numerical",
    head_dim: int | None = None,
) -> TextSpanResult:
    """TextSpan of one head: C (n, d) contributions, T (M, d) unit text embeddings.

    r: rank kept in step 1: "numerical" (the head's numerical rank, ``numerical_ranks``) [default],
        80 = REFERENCE_RANK (the reference), "head_dim+3" (a head's output has rank ≤ head_dim + 3,
        needs ``head_dim``) or any positive int. When r exceeds the head's rank (80 > 67 for 64-dim
        heads) the extra directions of V_r are rounding noise, and picks after the first can change
        with it (float16 storage of C does change them); "numerical" and "head_dim+3" do not have that
        freedom.
    """
    batched = text_span_heads(C.unsqueeze(0), T, k=k, r=r, head_dim=head_dim)
    return TextSpanResult(batched.indices[0], batched.scores[0], batched.reconstruction[0], batched.ranks[0])


def text_span_heads(
    C: torch.Tensor,
    T: torch.Tensor,
    k: int = 20,
    r: RankOption = "numerical",
    head_dim: int | None = None,
) -> TextSpanResult:
    """TextSpan of Hh independent heads at once: C (Hh, n, d), T (M, d) shared by all heads.

    Computes in float32 (float16 storage of C is accepted, and sets the noise level of r = "numerical").
    r, head_dim: as in ``text_span``; with "numerical" each head gets its own r (``ranks``), and a head
    whose numerical rank is below k gets r = k so that k picks exist (picks past its rank are noise
    in any case); with head_dim given, r ≤ head_dim + 3.

    On CUDA the heads run as one batched computation (the only Python loop is over the k greedy
    steps). On CPU they run one after another: the batched step's (Hh, M, r) temporaries (13 MB for
    12 heads × 3,498 texts) fall out of cache and are fresh allocations (page faults) at every
    operation, so the batch was slower than a loop of single heads; the results are the same.
    """
    n_heads, n, d = C.shape
    if C.device.type == "cpu" and n_heads > 1:
        parts = [text_span_heads(C[h: h + 1], T, k=k, r=r, head_dim=head_dim) for h in range(n_heads)]
        return TextSpanResult(*(torch.cat([getattr(p, f) for p in parts])
                                for f in ("indices", "scores", "reconstruction", "ranks")))
    storage = C.dtype
    C = C.to(torch.float32)
    T = T.to(device=C.device, dtype=torch.float32)
    fixed = _rank(r, head_dim, n, d)
    if n < 2:
        raise CliplabError("TextSpan needs at least 2 images (its score is a std over images)")
    limit = min(fixed or min(n, d), T.shape[0])
    if not 1 <= k <= limit:
        # After r picks every text is deflated to 0 in span(V_r): further picks would be noise.
        raise CliplabError(f"k must be in 1..min(r={fixed or 'numerical ≤ ' + str(min(n, d))}, M={T.shape[0]}); got {k}")

    with torch.inference_mode():
        eigenvalues, eigenvectors = _gram_eigh(C)
        if fixed is None:
            ranks = numerical_ranks(eigenvalues, n, storage)
            if head_dim is not None:
                ranks = ranks.clamp(max=head_dim + 3)
            ranks = ranks.clamp(min=k)
        else:
            ranks = torch.full((n_heads,), fixed, dtype=torch.int64, device=C.device)
        basis = span_basis(eigenvectors, ranks)  # V_r (Hh, r_max, d), rows past a head's r are 0

        mean = C.mean(1, keepdim=True)  # μ_C (Hh, 1, d)
        coords = (C - mean) @ basis.mT  # centred C_r (Hh, n, r)
        texts = T @ basis.mT  # T_r (Hh, M, r): step 2 in span coordinates
        recon_coords = torch.zeros_like(coords)
        heads = torch.arange(n_heads, device=C.device)
        indices = torch.empty(n_heads, k, dtype=torch.int64, device=C.device)
        scores = torch.empty(n_heads, k, device=C.device)

        for step in range(k):
            covariance = coords.mT @ coords  # (Hh, r, r)
            variance = ((texts @ covariance) * texts).sum(-1) / (n - 1)  # (Hh, M)
            best = variance.argmax(-1)
            indices[:, step] = best
            scores[:, step] = variance[heads, best].clamp_min(0).sqrt()

            t = texts[heads, best]  # (Hh, r)
            t_sq = (t * t).sum(-1, keepdim=True)
            coef = (coords @ t.unsqueeze(-1)) / t_sq.unsqueeze(-1)  # (Hh, n, 1)
            recon_coords += coef * t.unsqueeze(1)
            coords -= coef * t.unsqueeze(1)
            texts -= ((texts @ t.unsqueeze(-1)) / t_sq.unsqueeze(-1)) * t.unsqueeze(1)
            # Deflation leaves ~1e-8 of the picked text; zero it so it can never win again.
            texts[heads, best] = 0.0

        reconstruction = mean + recon_coords @ basis
    return TextSpanResult(indices, scores, reconstruction, ranks)


def _gram_eigh(C: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending, = σ_i²) and eigenvectors of CᵀC in float64, C (Hh, n, d).

    Right singular vectors of C = eigenvectors of CᵀC: the (d, d) eigenproblem is much cheaper than
    the SVD of a tall C. The Gram matrix must be float64: in float32 the directions with σ_i/σ_1
    below ~1e-3 come out as noise, and span(V_r) must keep them.
    """
    wide = C.to(torch.float64)
    return torch.linalg.eigh(wide.mT @ wide)


def numerical_ranks(eigenvalues: torch.Tensor, n: int, storage: torch.dtype = torch.float32) -> torch.Tensor:
    """Per head the number of singular values of C (n, d) above its noise level: (Hh,) int64.

    eigenvalues: (Hh, d) of CᵀC (= σ_i²). Rounding C to ``storage`` (the computation itself is float32,
    so at least float32's eps) perturbs each entry by up to eps/2 of it; such a perturbation of an
    n × d matrix has largest singular value ≈ (eps/2)/√3 · rms(C) · (√n + √d), rms(C) = ‖C‖_F/√(nd).
    σ_i counts when it exceeds NOISE_FACTOR (10) × eps · rms(C) · (√n + √d), ≈ 35× that noise edge,
    and the float64 Gram matrix's own resolution, √(d · eps64) · σ_1 (eigenvalues of CᵀC are accurate
    to ≈ d·eps64·σ_1²). Relative to σ_1 that is ≈ 1e-7–1e-6 from float32 contributions and ≈ 1e-3
    from float16-stored ones (n = 10,000, d = 512), far below the spread of a real head's signal
    directions and far above its rounding-noise directions. A zero head has rank 0.
    """
    d = eigenvalues.shape[-1]
    eps = max(torch.finfo(storage).eps, torch.finfo(torch.float32).eps) if storage.is_floating_point \
        else torch.finfo(torch.float32).eps
    lam = eigenvalues.clamp_min(0)
    frobenius = lam.sum(-1, keepdim=True).sqrt()
    noise = NOISE_FACTOR * eps * frobenius * (n**0.5 + d**0.5) / (n * d) ** 0.5
    gram = (d * torch.finfo(torch.float64).eps * lam.amax(-1, keepdim=True)).sqrt()
    cut = torch.maximum(noise, gram)
    return ((lam.sqrt() > cut) & (lam > 0)).sum(-1)


def span_basis(eigenvectors: torch.Tensor, ranks: torch.Tensor) -> torch.Tensor:
    """V_r as (Hh, max r, d) float32 rows from eigenvectors (Hh, d, d) of CᵀC (eigenvalues ascending).

    Head h keeps its top ranks[h] eigenvectors; its remaining rows are 0, which leaves every TextSpan
    quantity exactly as with its own r (zero coordinates add exact zeros).
    """
    r_max = int(ranks.max())
    top = eigenvectors[..., eigenvectors.shape[-1] - r_max:].mT  # (Hh, r_max, d), ascending eigenvalue
    order = torch.arange(r_max - 1, -1, -1, device=top.device)  # position from the top
    keep = order[None, :] < ranks.to(top.device)[:, None]
    return torch.where(keep[..., None], top, 0.0).to(torch.float32)


def _rank(r: int | str, head_dim: int | None, n: int, d: int) -> int | None:
    """The fixed r as used (≤ n, d), or None for "numerical"."""
    if r == "numerical":
        return None
    if r == "head_dim+3":
        if head_dim is None:
            raise CliplabError('r="head_dim+3" needs head_dim')
        r = head_dim + 3
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise CliplabError(f'r must be a positive int, "head_dim+3" or "numerical"; got {r!r}')
    return min(r, n, d)
