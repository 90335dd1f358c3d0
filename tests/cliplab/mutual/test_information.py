import math
import random

import numpy as np
import pytest

from cliplab.errors import CliplabError
from cliplab.mutual.information import auc, average_curves, importance_order, linear_fit, mi_curve, mutual_information

# 15 visual descriptors, 50 class descriptors, 3 in common
D_V = list(range(100, 115))
D_Y = [100, 107, 114] + list(range(200, 247))


def test_reference_convention_adds_the_joint_entropy():
    mi, c = mutual_information(D_V, D_Y)
    assert c == 3
    assert mi == pytest.approx(math.log(15) + math.log(50) + math.log(3))


def test_textbook_convention_subtracts_it():
    mi, c = mutual_information(D_V, D_Y, convention="textbook")
    assert c == 3
    assert mi == pytest.approx(math.log(15) + math.log(50) - math.log(3))


@pytest.mark.parametrize("convention", ["reference", "textbook"])
def test_no_match_is_zero(convention):
    assert mutual_information(["a", "b"], ["c"], convention) == (0.0, 0)
    assert mutual_information([], ["c"], convention) == (0.0, 0)


def test_match_count_counts_cells_of_the_table():
    mi, c = mutual_information(["a", "a", "b"], ["a", "c"])
    assert c == 2
    assert mi == pytest.approx(math.log(3) + math.log(2) + math.log(2))


def textbook_from_the_table(D_v, D_y):
    """Σ T_ij ln(T_ij / (p_i p_j)) with uniform marginals p_i = 1/N, p_j = 1/M, over the table itself."""
    T = np.array([[float(x == y) for y in D_y] for x in D_v])
    T /= T.sum()
    nonzero = T > 0
    return float((T[nonzero] * np.log(T[nonzero] * len(D_v) * len(D_y))).sum())


def test_textbook_matches_its_definition_and_is_never_negative():
    rng = random.Random(0)
    for _ in range(50):
        D_v = [rng.randrange(6) for _ in range(rng.randint(1, 8))]
        D_y = [rng.randrange(6) for _ in range(rng.randint(1, 8))]
        mi, c = mutual_information(D_v, D_y, "textbook")
        if c:
            assert mi == pytest.approx(textbook_from_the_table(D_v, D_y))
        assert mi >= 0
    # every cell matches: c = N·M, the bound where it reaches 0
    assert mutual_information(["a"] * 3, ["a"] * 2, "textbook")[0] == pytest.approx(0.0)


def test_unknown_convention_is_refused():
    with pytest.raises(CliplabError):
        mutual_information(D_V, D_Y, "paper")


def test_mi_curve_keeps_n_fixed_while_removing():
    # None in D_ŷ: a removed descriptor must match nothing, not even None
    D_y = ["c", "x", "a", None, "z"]
    ln20 = math.log(4) + math.log(5)
    assert mi_curve(["a", "b", "c", "d"], D_y) == pytest.approx([ln20 + math.log(2), ln20, ln20, 0, 0])
    assert mi_curve(["a", "b", "c", "d"], D_y, "textbook") == pytest.approx(
        [ln20 - math.log(2), ln20, ln20, 0, 0])


def test_mi_curve_of_the_paper_size_has_16_points_ending_at_zero():
    curve = mi_curve(D_V, D_Y)
    assert len(curve) == 16 and curve[-1] == 0.0
    assert curve[0] == pytest.approx(math.log(15) + math.log(50) + math.log(3))


def test_auc_mean_and_trapezoid():
    curve = [4.0, 1.0, 1.0, 0.0]
    assert auc(curve) == pytest.approx(1.5)
    # x = 0, 1/3, 2/3, 1: (2.5 + 1 + 0.5) / 3
    assert auc(curve, "trapezoid") == pytest.approx(4 / 3)
    assert auc([2.0]) == 2.0 and auc([2.0], "trapezoid") == 0.0
    with pytest.raises(CliplabError):
        auc([])
    with pytest.raises(CliplabError):
        auc(curve, "simpson")


def test_average_curves_zero_pads_to_the_longest():
    assert average_curves([[1, 2], [3]]) == pytest.approx([2, 1])
    assert average_curves([[1, 2, 3], [3, 2], [2]]) == pytest.approx([2, 4 / 3, 1])
    with pytest.raises(CliplabError):
        average_curves([])


def test_importance_order_dedupes_then_sorts_by_image_similarity():
    image_sim = np.zeros(10)
    image_sim[[3, 5, 7]] = [0.2, 0.1, 0.3]
    ids, scores = importance_order([[5, 3], [3, 7]], image_sim)
    assert ids == [7, 3, 5]
    assert scores == pytest.approx([0.3, 0.2, 0.1])


def test_importance_order_keeps_first_seen_order_on_ties_and_caps():
    assert importance_order([[2, 1]], np.zeros(3))[0] == [2, 1]
    ids, scores = importance_order([list(range(20))], np.arange(20) / 20)
    assert ids == list(range(19, 4, -1)) and len(scores) == 15
    assert importance_order([], np.zeros(3))[0] == []


def test_linear_fit_recovers_a_line_and_refuses_one_model():
    slope, intercept, r = linear_fit([3.0, 3.5, 4.5], [11.24 * x + 25.97 for x in (3.0, 3.5, 4.5)])
    assert slope == pytest.approx(11.24) and intercept == pytest.approx(25.97) and r == pytest.approx(1.0)
    # the paper's three ViTs (Table 3, PCA): the fit the published numbers themselves give
    slope, intercept, _ = linear_fit([3.61, 3.62, 4.47], [61.66, 67.70, 74.77])
    x, y = np.array([3.61, 3.62, 4.47]), np.array([61.66, 67.70, 74.77])
    expected = ((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum()
    assert slope == pytest.approx(expected) and intercept == pytest.approx(y.mean() - expected * x.mean())
    with pytest.raises(CliplabError, match="two models"):
        linear_fit([3.0, 3.0], [60.0, 70.0])
