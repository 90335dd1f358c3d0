"""Replacement evaluation: hand-computed top-1, and the curve's defining invariants on planted heads."""

import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.heads.replacement import replacement_curve, zero_shot_top1
from cliplab.heads.textspan import text_span_heads

N, D, K, Q, HEADS = 240, 24, 4, 6, 3


def test_zero_shot_top1_by_hand():
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    emb = torch.tensor([[2.0, 1.0], [0.1, 0.3], [5.0, -1.0], [-1.0, -2.0]])  # predictions 0, 1, 0, 0
    assert zero_shot_top1(emb, weights, torch.tensor([0, 1, 1, 0])) == 0.75
    # the norm of an embedding never matters
    assert zero_shot_top1(emb * torch.tensor([[3.0], [0.2], [1.0], [7.0]]), weights, torch.tensor([0, 1, 1, 0])) == 0.75
    with pytest.raises(CliplabError, match="labels"):
        zero_shot_top1(emb, weights, torch.tensor([0, 1]))


def _planted(seed: int = 0):
    """Heads whose outputs live in rank-Q subspaces containing the class directions; the class is in the heads."""
    g = torch.Generator().manual_seed(seed)
    weights = torch.nn.functional.normalize(torch.randn(K, D, generator=g), dim=1)
    labels = torch.randint(0, K, (N,), generator=g)
    heads = []
    for _ in range(HEADS):
        extra = torch.randn(Q - K, D, generator=g)
        basis = torch.cat([weights, extra])  # (Q, D): the head's output space
        coef = 0.4 * torch.randn(N, Q, generator=g) + 0.3 * torch.randn(Q, generator=g)  # uncentred: an offset
        coef[torch.arange(N), labels] += 1.0  # the head writes its image's class direction
        heads.append(coef @ basis)
    heads = torch.stack(heads)  # (HEADS, N, D)
    texts = torch.nn.functional.normalize(torch.randn(50, D, generator=g), dim=1)
    kept = 0.1 * torch.randn(N, D, generator=g)
    return heads, texts, weights, labels, kept


def test_full_span_reconstruction_gives_the_exact_accuracy_and_k0_is_chance():
    heads, texts, weights, labels, kept = _planted()
    earlier = torch.zeros(N, D)  # nothing mean-ablated: the ceiling is the exact embedding
    curve = replacement_curve(kept, earlier, [heads[:2], heads[2:]], texts, weights, labels, ks=(0, 1, 3, Q), r=Q)
    assert curve.ks == (0, 1, 3, Q)
    assert curve.ablated_top1 == curve.baseline_top1
    assert curve.baseline_top1 > 0.8  # the heads carry the class
    # k = r = the heads' rank: Q orthogonalised texts span each head's output space, R_h = c_h exactly
    assert curve.top1[-1] == curve.baseline_top1
    # every head at its mean: one prediction for every image, the majority class at best
    assert curve.top1[0] <= max(float((labels == c).float().mean()) for c in range(K)) + 1e-9
    assert curve.top1[0] < curve.top1[-1] - 0.5
    # picks: the chunks' TextSpan runs concatenated in chunk order
    alone = text_span_heads(heads, texts, k=Q, r=Q)
    assert torch.equal(curve.indices, alone.indices)
    torch.testing.assert_close(curve.scores, alone.scores)


def test_mean_ablated_earlier_layers_cap_the_curve():
    heads, texts, weights, labels, kept = _planted(1)
    g = torch.Generator().manual_seed(5)
    # earlier layers carry class information too; mean ablation removes it, but full spans still match the ceiling
    earlier = 2.0 * weights[labels] + 0.5 * torch.randn(N, D, generator=g)
    curve = replacement_curve(kept, earlier, [heads], texts, weights, labels, ks=(1, Q), r=Q)
    assert curve.top1[-1] == curve.ablated_top1
    expected = zero_shot_top1(kept + earlier.mean(0) + heads.sum(0), weights, labels)
    assert curve.ablated_top1 == expected
    assert curve.baseline_top1 == zero_shot_top1(kept + earlier + heads.sum(0), weights, labels)
    assert curve.baseline_top1 > curve.ablated_top1  # the ablated information was useful


def test_bad_shapes_are_refused():
    heads, texts, weights, labels, kept = _planted()
    with pytest.raises(CliplabError, match="head chunk"):
        replacement_curve(kept, torch.zeros(N, D), [heads[:, :10]], texts, weights, labels, ks=(1,), r=Q)
    with pytest.raises(CliplabError, match="ks"):
        replacement_curve(kept, torch.zeros(N, D), [heads], texts, weights, labels, ks=(-1,), r=Q)


@pytest.mark.parametrize("r", [Q, 10])
def test_reconstructions_from_one_greedy_run_equal_separate_runs(r):
    """R(k) from the k_max run's picks == TextSpan run with k texts, for every k (also r above the heads' rank)."""
    from cliplab.heads.replacement import greedy_reconstructions

    heads, texts, _, _, _ = _planted(2)
    full = text_span_heads(heads, texts, k=Q, r=r)
    recon = greedy_reconstructions(heads, texts, full.indices, (0, 1, 2, 4, Q), rank=r)
    torch.testing.assert_close(recon[0], heads.mean(1, keepdim=True).expand_as(heads))
    for k in (1, 2, 4, Q):
        alone = text_span_heads(heads, texts, k=k, r=r)
        assert torch.equal(alone.indices, full.indices[:, :k])
        torch.testing.assert_close(recon[k], alone.reconstruction, atol=2e-5, rtol=1e-4)
    # and the reconstructions differ between k (the test would pass trivially if they did not)
    assert (recon[1] - recon[Q]).abs().max() > 0.1


def test_curves_for_several_banks_match_single_bank_runs():
    from cliplab.heads.replacement import replacement_curves

    heads, texts, weights, labels, kept = _planted(3)
    earlier = torch.zeros(N, D)
    both = replacement_curves(kept, earlier, [heads], {"a": texts, "b": texts.flip(0)}, weights, labels,
                              ks=(1, 2, Q), r=Q)
    for name, bank in (("a", texts), ("b", texts.flip(0))):
        one = replacement_curve(kept, earlier, [heads], bank, weights, labels, ks=(1, 2, Q), r=Q)
        assert both[name].top1 == one.top1 and torch.equal(both[name].indices, one.indices)
