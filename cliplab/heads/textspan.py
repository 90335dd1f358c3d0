"""TextSpan (Gandelsman et al., ICLR 2024, Sec. 4.1): describe one head's output space with k texts.

C ∈ R^{n×d} holds one head's token-summed contributions over n images, T ∈ R^{M×d} the unit text
embeddings of a description bank. Steps (reference ``replace_with_iterative_removal``):

1. V_r = top-r right singular vectors of the *uncentred* C (computed as eigenvectors of CᵀC).
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


@dataclass(frozen=True)
class TextSpanResult:
    """Greedy TextSpan output; a leading head axis (Hh) when produced by ``text_span_heads``.

    indices: (k,) or (Hh, k) int64 rows of T in pick order (rank = position).
    scores: (k,) or (Hh, k) std over images of C·t_j at the step t_j was picked (unbiased, as the
        reference's ``torch.std``), the quantity the greedy maximises.
    reconstruction: (n, d) or (Hh, n, d) R = μ_C + Σ_steps coef ⊗ t, a real buffer (rows differ).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    reconstruction: torch.Tensor


def text_span(
    C: torch.Tensor,
    T: torch.Tensor,
    k: int = 20,
    r: int | Literal["head_dim+3"] = REFERENCE_RANK,
    head_dim: int | None = None,
) -> TextSpanResult:
    """TextSpan of one head: C (n, d) contributions, T (M, d) unit text embeddings.

    r: rank kept in step 1: 80 (reference) or "head_dim+3" (a head's output has rank ≤ head_dim + 3),
        which needs ``head_dim``. When r exceeds the head's rank (80 > 67 for 64-dim heads) the extra
        directions of V_r are rounding noise, and picks after the first can change with it (float16
        storage of C does change them); r = "head_dim+3" does not have that freedom.
    """
    batched = text_span_heads(C.unsqueeze(0), T, k=k, r=r, head_dim=head_dim)
    return TextSpanResult(batched.indices[0], batched.scores[0], batched.reconstruction[0])


def text_span_heads(
    C: torch.Tensor,
    T: torch.Tensor,
    k: int = 20,
    r: int | Literal["head_dim+3"] = REFERENCE_RANK,
    head_dim: int | None = None,
) -> TextSpanResult:
    """TextSpan of Hh independent heads at once: C (Hh, n, d), T (M, d) shared by all heads.

    Computes in float32 (float16 storage of C is accepted). Batched over heads; the only Python
    loop is over the k greedy steps.
    """
    C = C.to(torch.float32)
    T = T.to(device=C.device, dtype=torch.float32)
    n_heads, n, d = C.shape
    rank = _rank(r, head_dim, n, d)
    if n < 2:
        raise CliplabError("TextSpan needs at least 2 images (its score is a std over images)")
    if not 1 <= k <= min(rank, T.shape[0]):
        # After `rank` picks every text is deflated to 0 in span(V_r): further picks would be noise.
        raise CliplabError(f"k must be in 1..min(r={rank}, M={T.shape[0]}); got {k}")

    with torch.inference_mode():
        # Right singular vectors of C = eigenvectors of CᵀC: the (d, d) eigenproblem is much cheaper
        # than the SVD of a tall C. The Gram matrix must be float64: in float32 the directions with
        # σ_i/σ_1 below ~1e-3 come out as noise, and span(V_r) must keep them.
        wide = C.to(torch.float64)
        eigenvectors = torch.linalg.eigh(wide.mT @ wide)[1]  # eigenvalues ascending
        del wide
        basis = eigenvectors[..., -rank:].mT.to(torch.float32)  # V_r (Hh, r, d)

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
    return TextSpanResult(indices, scores, reconstruction)


def _rank(r: int | str, head_dim: int | None, n: int, d: int) -> int:
    if r == "head_dim+3":
        if head_dim is None:
            raise CliplabError('r="head_dim+3" needs head_dim')
        r = head_dim + 3
    if not isinstance(r, int) or r < 1:
        raise CliplabError(f'r must be a positive int or "head_dim+3"; got {r!r}')
    return min(r, n, d)
