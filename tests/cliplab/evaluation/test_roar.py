"""ROAR: exact removal counts and tie order, the area's sign, and a planted dataset whose label sits in one region."""

import numpy as np
import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.evaluation.roar import (
    RoarSplit,
    pixel_ranking,
    probe_accuracy,
    random_ranking,
    remove_top_fraction,
    roar,
    roar_area,
    train_linear_probe,
)

FILL = (0.1, 0.2, 0.3)


def test_removes_exactly_the_top_fraction_with_the_fill():
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(3, 3, 4, 5, generator=g)
    saliency = torch.rand(3, 4, 5, generator=g)
    out = remove_top_fraction(pixels, saliency, 0.3, FILL)
    removed = (out != pixels).any(1)  # (B, H, W)
    assert (removed.flatten(1).sum(1) == 6).all()  # round(0.3 · 20)
    # the removed positions are the 6 most salient, and carry the per-channel fill
    top = saliency.flatten(1).topk(6, dim=1).indices
    assert torch.equal(removed.flatten(1), torch.zeros(3, 20, dtype=torch.bool).scatter(1, top, True))
    for ch, v in enumerate(FILL):
        assert torch.all(out[:, ch][removed] == v)
    assert torch.equal(out[~removed.unsqueeze(1).expand_as(out)], pixels[~removed.unsqueeze(1).expand_as(out)])
    assert torch.equal(remove_top_fraction(pixels, saliency, 0.0, FILL), pixels)
    assert (remove_top_fraction(pixels, saliency, 1.0, FILL) == torch.tensor(FILL).view(1, 3, 1, 1)).all()


def test_ties_are_broken_by_row_major_index():
    flat = torch.zeros(1, 3, 3)
    flat[0, 2, 2] = 1.0
    assert pixel_ranking(flat)[0].tolist() == [8, 0, 1, 2, 3, 4, 5, 6, 7]
    out = remove_top_fraction(torch.ones(1, 3, 3, 3), flat, 3 / 9, FILL)
    assert (out[0, 0] != 1).flatten().nonzero().squeeze(1).tolist() == [0, 1, 8]


def test_shape_mismatch_is_refused():
    with pytest.raises(CliplabError, match="saliency"):
        remove_top_fraction(torch.rand(2, 3, 4, 4), torch.rand(2, 4, 5), 0.5, FILL)


def test_random_ranking_is_seeded_and_a_permutation():
    a = random_ranking((2, 8, 8), torch.Generator().manual_seed(1))
    b = random_ranking((2, 8, 8), torch.Generator().manual_seed(1))
    c = random_ranking((2, 8, 8), torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (pixel_ranking(a).sort(1).values == torch.arange(64)).all()


def test_area_sign_and_trapezoid_by_hand():
    t = [0.1, 0.5, 0.9]
    # the method is 0.4 below random everywhere: 0.4 · (0.9 − 0.1)
    assert roar_area([0.5, 0.3, 0.1], [0.9, 0.7, 0.5], t) == pytest.approx(0.32)
    assert roar_area([0.9, 0.7, 0.5], [0.5, 0.3, 0.1], t) == pytest.approx(-0.32)
    # a gap only at the middle point: a triangle of height 0.2 over 0.8
    assert roar_area([0.5, 0.3, 0.5], [0.5, 0.5, 0.5], t) == pytest.approx(0.08)


def test_probe_is_deterministic_and_fits_separable_data():
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(90) % 3
    features = torch.randn(90, 5, generator=g) + 4 * torch.nn.functional.one_hot(labels, 5).float()
    p1, p2 = train_linear_probe(features, labels, seed=0), train_linear_probe(features, labels, seed=0)
    assert probe_accuracy(p1, features, labels) == 1.0
    assert np.array_equal(p1[-1].coef_, p2[-1].coef_)


def planted(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8×8 images; only the top-left 2×2 block carries the class (intensity 0.2 … 0.8), the rest is noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    pixels = torch.rand(n, 3, 8, 8, generator=g)
    level = (0.2 + 0.2 * labels.float()).view(n, 1, 1, 1)
    pixels[:, :, :2, :2] = (level + 0.03 * torch.randn(n, 3, 2, 2, generator=g)).clamp(0, 1)
    return pixels, labels


def test_true_saliency_degrades_faster_than_random_and_a_wrong_map_does_not():
    train_x, train_y = planted(200, 0)
    test_x, test_y = planted(200, 1)
    fill = train_x.mean(dim=(0, 2, 3))
    region = torch.zeros(8, 8)
    region[:2, :2] = 1.0
    rows, cols = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    away = rows + cols  # most salient in the far corner, the label's region last

    def encode(pixels):  # a frozen patch encoder: the mean of each 2×2 patch (the label's region is one patch)
        return torch.nn.functional.avg_pool2d(pixels, 2).flatten(1)

    def run(saliency_map):
        maps = saliency_map.expand(200, 8, 8)
        return roar(encode, RoarSplit(train_x, train_y, maps), RoarSplit(test_x, test_y, maps), fill, seed=0)

    true, wrong = run(region), run(away)
    assert true.method.max() < 0.4  # the region goes first: chance (0.25) at every t
    assert true.random[0] > 0.6  # at 10 % random removal most of the region is still there
    assert true.area > 0.15
    assert wrong.method.min() > 0.85  # the region survives to t = 90 %
    assert wrong.area < 0
    np.testing.assert_array_equal(true.random, wrong.random)  # same seed → same control
