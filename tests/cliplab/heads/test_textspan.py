import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.heads.textspan import text_span, text_span_heads


def _orthonormal(rows: int, dim: int, gen: torch.Generator) -> torch.Tensor:
    """(rows, dim) orthonormal rows."""
    return torch.linalg.qr(torch.randn(dim, rows, generator=gen, dtype=torch.float64))[0].T


def _white_scores(n: int, m: int, gen: torch.Generator) -> torch.Tensor:
    """(n, m) columns with mean exactly 0, unbiased std exactly 1 and no sample correlation."""
    raw = torch.randn(n, m, generator=gen, dtype=torch.float64)
    return torch.linalg.qr(raw - raw.mean(0))[0] * (n - 1) ** 0.5


def _literal_text_span(C, T, k, r):
    """The spec's steps transcribed one by one in float64 numpy (stride-0 aliasing avoided)."""
    C, T = np.asarray(C, np.float64), np.asarray(T, np.float64)
    vh = np.linalg.svd(C, full_matrices=False)[2][:r]
    T = T @ vh.T @ vh
    mean = C.mean(0, keepdims=True)
    C = C - mean
    R = np.repeat(mean, len(C), axis=0)
    picks, scores = [], []
    for _ in range(k):
        std = (C @ T.T).std(0, ddof=1)
        j = int(np.argmax(std))
        picks.append(j)
        scores.append(std[j])
        t = T[j]
        coef = C @ t / (t @ t)
        R += np.outer(coef, t)
        C -= np.outer(coef, t)
        T = T - np.outer(T @ t / (t @ t), t)
    return picks, np.array(scores), R


def _random_heads(n_heads, n, d, rank, gen):
    """(n_heads, n, d) low-rank head outputs with a mean offset and decaying spectra."""
    spectrum = torch.logspace(0.5, -1, rank)
    latent = torch.randn(n_heads, n, rank, generator=gen) * spectrum
    return latent @ torch.randn(n_heads, rank, d, generator=gen) + torch.randn(n_heads, 1, d, generator=gen)


def test_planted_texts_are_recovered_in_order_with_their_std():
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 24
    directions = _orthonormal(4, d, gen)
    stds = torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=torch.float64)
    C = 3 * F.normalize(torch.randn(d, generator=gen, dtype=torch.float64), dim=0) + (
        _white_scores(n, 4, gen) * stds
    ) @ directions
    T = F.normalize(torch.randn(40, d, generator=gen, dtype=torch.float64), dim=-1)
    planted = [17, 3, 30, 8]
    T[planted] = directions

    out = text_span(C.float(), T.float(), k=4)

    assert out.indices.tolist() == planted
    # Unbiased std over images (the population std would be 0.25 % lower at n = 200).
    torch.testing.assert_close(out.scores, stds.float(), rtol=2e-5, atol=0)
    torch.testing.assert_close(out.reconstruction, C.float(), atol=1e-4, rtol=0)


def test_deflating_texts_and_outputs_reconstructs_exactly_with_distinct_rows():
    gen = torch.Generator().manual_seed(1)
    n, d = 100, 16
    p1, p2, other = _orthonormal(3, d, gen)
    z = _white_scores(n, 2, gen)
    C = torch.outer(z[:, 0], 8 * p1) + torch.outer(z[:, 1], 4 * p2) + 2 * other
    # The second text overlaps the first: only after deflating it by p1 does its coefficient rebuild
    # the p2 part alone; without deflating C it would re-add the p1 part.
    T = torch.stack([p1, F.normalize(p1 + p2, dim=0), F.normalize(p1 + other, dim=0)])

    out = text_span(C.float(), T.float(), k=2)

    assert out.indices.tolist() == [0, 1]
    torch.testing.assert_close(out.reconstruction, C.float(), atol=1e-5, rtol=0)
    assert (out.reconstruction[0] - out.reconstruction[1]).abs().max() > 1
    assert out.reconstruction.stride(0) != 0


def test_texts_are_projected_on_the_top_singular_vectors_of_the_uncentred_outputs():
    gen = torch.Generator().manual_seed(2)
    n, d = 300, 12
    p1, p2, p3 = _orthonormal(3, d, gen)
    z = _white_scores(n, 3, gen)
    # The mean along p3 makes p3 the top *uncentred* direction; centred, p2 would be second.
    C = torch.outer(8 * z[:, 0], p1) + torch.outer(4 * z[:, 1], p2) + torch.outer(20 + z[:, 2], p3)
    T = torch.stack([F.normalize(p1 + p2, dim=0), p2])

    out = text_span(C.float(), T.float(), k=1, r=2)

    # span(V_2) = {p3, p1}: the text becomes p1/√2, so only the p1 part of C is rebuilt.
    expected = C.mean(0) + torch.outer((C - C.mean(0)) @ p1, p1)
    assert out.indices.tolist() == [0]
    torch.testing.assert_close(out.scores, torch.tensor([8 / 2**0.5]), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.reconstruction, expected.float(), atol=1e-4, rtol=0)


@pytest.mark.parametrize(("r", "head_dim"), [(80, None), (3, None), ("head_dim+3", 2)])
def test_matches_a_literal_transcription_of_the_spec(r, head_dim):
    gen = torch.Generator().manual_seed(3)
    C = _random_heads(1, 300, 32, rank=5, gen=gen)[0]
    T = F.normalize(torch.randn(60, 32, generator=gen), dim=-1)

    out = text_span(C, T, k=5 if r != 3 else 3, r=r, head_dim=head_dim)
    picks, scores, recon = _literal_text_span(C, T, k=len(out.indices), r=r if isinstance(r, int) else head_dim + 3)

    assert out.indices.tolist() == picks
    np.testing.assert_allclose(out.scores.numpy(), scores, rtol=1e-4)
    np.testing.assert_allclose(out.reconstruction.numpy(), recon, atol=1e-4)


def test_batched_heads_equal_the_per_head_loop():
    gen = torch.Generator().manual_seed(4)
    C = _random_heads(3, 150, 20, rank=6, gen=gen)
    T = F.normalize(torch.randn(50, 20, generator=gen), dim=-1)

    batched = text_span_heads(C, T, k=6, r="head_dim+3", head_dim=4)
    singles = [text_span(C[h], T, k=6, r=7) for h in range(3)]

    assert batched.indices.tolist() == [s.indices.tolist() for s in singles]
    assert len({tuple(row) for row in batched.indices.tolist()}) == 3  # the heads really differ
    torch.testing.assert_close(batched.scores, torch.stack([s.scores for s in singles]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        batched.reconstruction, torch.stack([s.reconstruction for s in singles]), rtol=0, atol=1e-5
    )


def test_a_picked_text_and_its_duplicates_are_never_picked_again():
    gen = torch.Generator().manual_seed(5)
    n, d = 80, 10
    C = torch.randn(n, d, generator=gen) * torch.linspace(3, 0.5, d)
    T = F.normalize(torch.randn(30, d, generator=gen), dim=-1)
    T[1] = T[0]
    T[2] = -T[0]

    out = text_span(C, T, k=d)  # every dimension of span(V_r) used up

    picks = out.indices.tolist()
    assert len(set(picks)) == d
    assert len({0, 1, 2} & set(picks)) <= 1


def test_bad_arguments_are_refused():
    C, T = torch.randn(20, 8), F.normalize(torch.randn(12, 8), dim=-1)
    with pytest.raises(CliplabError, match="head_dim"):
        text_span(C, T, k=2, r="head_dim+3")
    with pytest.raises(CliplabError, match="k must be"):
        text_span(C, T, k=9)  # more picks than the 8 dimensions of span(V_r)
    with pytest.raises(CliplabError, match="at least 2 images"):
        text_span(C[:1], T, k=1)


def _planted_rank_head(rank: int, n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """(n, d) float64 head output of exact rank `rank` (an offset plus rank − 1 centred directions)."""
    directions = _orthonormal(rank, d, gen)
    spectrum = torch.logspace(0.5, -1.5, rank - 1, dtype=torch.float64)
    return 3 * directions[0] + (_white_scores(n, rank - 1, gen) * spectrum) @ directions[1:]


def test_numerical_rank_is_the_planted_rank_whatever_the_storage():
    gen = torch.Generator().manual_seed(6)
    n, d, rank, k = 400, 48, 9, 9
    C = _planted_rank_head(rank, n, d, gen)
    T = F.normalize(torch.randn(200, d, generator=gen, dtype=torch.float64), dim=-1)

    runs = {dtype: text_span(C.to(dtype), T, k=k, r="numerical") for dtype in (torch.float64, torch.float32, torch.float16)}

    for out in runs.values():
        assert int(out.ranks) == rank
        assert out.indices.tolist() == runs[torch.float64].indices.tolist()
    # the named reference option is still there, and records its r
    assert int(text_span(C.float(), T, k=k, r=80).ranks) == d


def test_picks_do_not_depend_on_rounding_noise_directions():
    gen = torch.Generator().manual_seed(7)
    n, d, rank, k = 300, 40, 8, 8
    C = _planted_rank_head(rank, n, d, gen)
    T = F.normalize(torch.randn(150, d, generator=gen, dtype=torch.float64), dim=-1)
    picks = set()
    for seed in range(4):
        noise = torch.randn(n, d, generator=torch.Generator().manual_seed(100 + seed), dtype=torch.float64)
        out = text_span(C + 1e-8 * noise, T, k=k, r="numerical")
        assert int(out.ranks) == rank
        picks.add(tuple(out.indices.tolist()))
    assert len(picks) == 1


def test_batched_heads_get_their_own_numerical_rank():
    gen = torch.Generator().manual_seed(8)
    n, d = 200, 32
    C = torch.stack([_planted_rank_head(q, n, d, gen) for q in (5, 7, 11)]).float()
    T = F.normalize(torch.randn(80, d, generator=gen), dim=-1)

    batched = text_span_heads(C, T, k=5, r="numerical")
    assert batched.ranks.tolist() == [5, 7, 11]
    for h, q in enumerate((5, 7, 11)):
        alone = text_span_heads(C[h: h + 1], T, k=5, r=q)
        assert batched.indices[h].tolist() == alone.indices[0].tolist()
    # head_dim caps the numerical rank at head_dim + 3; k raises a lower rank to k
    assert text_span_heads(C, T, k=5, head_dim=4, r="numerical").ranks.tolist() == [5, 7, 7]
    assert text_span_heads(C, T, k=6, r="numerical").ranks.tolist() == [6, 7, 11]
    with pytest.raises(CliplabError, match="r must be"):
        text_span(C[0], T, k=2, r="numeric")
