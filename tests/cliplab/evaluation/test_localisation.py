"""Localisation metrics by hand on tiny maps and masks."""

import math

import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.evaluation.localisation import (
    METRIC_DIRECTION,
    LocalisationAccumulator,
    average_precision,
    energy_pointing_game,
    pointing_game,
    soft_segmentation,
)


def _peak_at(row, col, size=8):
    m = torch.zeros(1, size, size)
    m[0, row, col] = 1.0
    return m


def _mask_at(*pixels, size=8):
    m = torch.zeros(1, size, size, dtype=torch.bool)
    for r, c in pixels:
        m[0, r, c] = True
    return m


def test_pointing_game_without_tolerance_needs_the_peak_inside_the_mask():
    mask = _mask_at((2, 3), (2, 4))
    assert pointing_game(_peak_at(2, 4), mask, tolerance=0).item() == 1.0
    assert pointing_game(_peak_at(3, 4), mask, tolerance=0).item() == 0.0  # one pixel off is a miss
    assert pointing_game(_peak_at(3, 4), mask, tolerance=1).item() == 0.0  # TorchRay: d < 1 is d = 0


def test_pointing_game_tolerance_is_a_strict_euclidean_distance_as_in_torchray():
    mask = _mask_at((0, 0))
    peak = _peak_at(3, 4)  # d = 5 from the only object pixel
    assert [pointing_game(peak, mask, tolerance=t).item() for t in (0, 4, 5, 6)] == [0.0, 0.0, 0.0, 1.0]
    # a diagonal neighbour is at √2: inside a 2 px tolerance, outside 1 px
    assert pointing_game(_peak_at(1, 1), mask, tolerance=2).item() == 1.0


def test_pointing_game_empty_mask_is_excluded_full_mask_is_a_hit_ties_take_the_first_pixel():
    maps = torch.cat([_peak_at(5, 5), _peak_at(5, 5), torch.zeros(1, 8, 8)])
    masks = torch.cat([torch.zeros(1, 8, 8, dtype=torch.bool), torch.ones(1, 8, 8, dtype=torch.bool), _mask_at((0, 0))])
    scores = pointing_game(maps, masks, tolerance=0)
    assert math.isnan(scores[0]) and scores[1] == 1.0 and scores[2] == 1.0  # constant map: arg-max is (0, 0)


def test_energy_pointing_game_by_hand():
    maps = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    masks = torch.tensor([[[1, 0], [0, 1]], [[1, 0], [0, 0]], [[0, 0], [0, 0]]])
    scores = energy_pointing_game(maps, masks)
    assert scores[0].item() == pytest.approx((1 + 4) / 10)
    assert scores[1].item() == 0.0  # no energy anywhere
    assert math.isnan(scores[2])
    with pytest.raises(CliplabError, match="non-negative"):
        energy_pointing_game(-maps, masks)


def test_soft_segmentation_is_minmax_then_above_the_mean():
    scaled, foreground = soft_segmentation(torch.tensor([[[0.0, 1.0], [2.0, 5.0]]]))
    torch.testing.assert_close(scaled, torch.tensor([[[0.0, 0.2], [0.4, 1.0]]], dtype=torch.float64))
    assert foreground.tolist() == [[[False, False], [False, True]]]  # mean 0.4: strictly above


def test_average_precision_by_hand():
    # S' = [0, 3/7, 5/14, 1] against object [0, 1, 0, 1]; 1 − S' = [1, 4/7, 9/14, 0] against background [1, 0, 1, 0].
    # Pooled (micro), by decreasing score: 1,1 (two hits) | 9/14 hit | 4/7 miss | 3/7 hit | ...
    # AP = Σ ΔR·P = 0.5·1 + 0.25·1 + 0.25·(4/5) = 0.95. Each pair alone ranks its positives first: AP 1 and 1.
    maps = torch.tensor([[[0.1, 0.4, 0.35, 0.8]]])
    masks = torch.tensor([[[0, 1, 0, 1]]])
    assert average_precision(maps, masks).item() == pytest.approx(0.95)
    assert average_precision(maps, masks, average="macro").item() == pytest.approx(1.0)
    # full mask: pooled, the background half is all negatives (AP 0.5 here); macro keeps the object AP only
    full = torch.ones(1, 1, 2, dtype=torch.bool)
    assert average_precision(torch.tensor([[[0.0, 1.0]]]), full).item() == pytest.approx(0.5)
    assert average_precision(torch.tensor([[[0.0, 1.0]]]), full, average="macro").item() == pytest.approx(1.0)
    assert math.isnan(average_precision(maps, torch.zeros_like(masks)).item())


def test_accumulator_sums_pixels_over_the_dataset_and_skips_empty_masks():
    # image A (1×4): map [0, 1, 2, 3] → foreground [F, F, T, T]; mask [0, 0, 1, 0]
    # image B (1×4): map [3, 0, 0, 0] → foreground [T, F, F, F]; mask [1, 1, 1, 0]
    # image C: empty mask, skipped
    acc = LocalisationAccumulator(tolerance=0)
    acc.update(torch.tensor([[[0.0, 1.0, 2.0, 3.0]]]), torch.tensor([[[0, 0, 1, 0]]]))
    acc.update(
        torch.tensor([[[3.0, 0.0, 0.0, 0.0]], [[1.0, 2.0, 3.0, 4.0]]]),
        torch.tensor([[[1, 1, 1, 0]], [[0, 0, 0, 0]]]),
    )
    r = acc.result()
    assert r["n_images"] == 2 and r["n_empty"] == 1
    # correct pixels: A 3 of 4, B 2 of 4
    assert r["pixel_accuracy"] == pytest.approx(5 / 8)
    # foreground: A ∩ 1, ∪ 2; B ∩ 1, ∪ 3 → 2/5 (the mean of per-image IoUs would be 5/12)
    assert r["iou_foreground"] == pytest.approx(2 / 5)
    # background: A ∩ 2, ∪ 3; B ∩ 1, ∪ 3 → 3/6
    assert r["iou_background"] == pytest.approx(3 / 6)
    assert r["miou"] == pytest.approx((2 / 5 + 3 / 6) / 2)
    # pointing: A's peak at col 3 is background (miss), B's at col 0 is object (hit)
    assert r["pointing_game"] == pytest.approx(0.5)
    assert r["energy_pointing_game"] == pytest.approx((2 / 6 + 3 / 3) / 2)
    expected_ap = average_precision(
        torch.tensor([[[0.0, 1.0, 2.0, 3.0]], [[3.0, 0.0, 0.0, 0.0]]]), torch.tensor([[[0, 0, 1, 0]], [[1, 1, 1, 0]]])
    ).mean()
    assert r["average_precision"] == pytest.approx(expected_ap.item())


def test_every_metric_declares_a_direction():
    result = LocalisationAccumulator().result()
    assert set(METRIC_DIRECTION) == set(result) - {"n_images", "n_empty"}
    assert set(METRIC_DIRECTION.values()) <= {"↑", "↓"}
    assert math.isnan(result["pointing_game"])  # nothing scored yet


def test_inputs_are_checked():
    with pytest.raises(CliplabError, match="same size"):
        pointing_game(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(CliplabError, match="binary"):
        pointing_game(torch.zeros(1, 4, 4), torch.full((1, 4, 4), 0.5))
