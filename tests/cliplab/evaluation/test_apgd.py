"""APGD against closed forms: the p_j schedule, the DLR-T formula, hand-computed robust accuracy of a linear model."""

import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.evaluation.apgd import (
    apgd_ce,
    apgd_t,
    checkpoints,
    dlr_targeted_loss,
    robust_accuracy,
)


def linear(w: torch.Tensor, b: torch.Tensor):
    return lambda x: x.flatten(1) @ w.T + b


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    return net.eval().requires_grad_(False)


def test_checkpoints_are_the_papers_p_j():
    p, marks = [0.0, 0.22], []
    while p[-1] <= 1.0:
        marks.append(round(p[-1] * 100))
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    assert checkpoints(100) == marks == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(10) == list(range(2, 11))  # every window at least one iteration


def test_dlr_targeted_loss_by_hand():
    z = torch.tensor([[3.0, 1.0, 2.0, 0.0, -1.0]])
    y, t = torch.tensor([0]), torch.tensor([1])
    # −(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2) = −(3 − 1) / (3 − (1 + 0)/2)
    assert dlr_targeted_loss(z, y, t).item() == pytest.approx(-2 / 2.5)
    # invariant to the logit scale and shift (CLIP's logit_scale does not matter)
    assert dlr_targeted_loss(100 * z + 7, y, t).item() == pytest.approx(-2 / 2.5)


def test_every_iterate_stays_in_the_eps_ball_and_the_box(mlp):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 8, 8, generator=g)
    x[:2] = x[:2].round()  # pixels on the faces of [0, 1]
    y = mlp(x).argmax(1)
    eps, seen = 8 / 255, []

    def check(x_k, x_clean):
        seen.append(x_k.shape[0])
        assert (x_k - x_clean).abs().max() <= eps + 1e-6
        assert x_k.min() >= 0 and x_k.max() <= 1

    for attack in (apgd_ce, apgd_t):
        adv, _ = attack(mlp, x, y, eps, seed=0, n_iter=20, on_iterate=check)
        assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    assert len(seen) >= 2 * 21  # start + 20 steps per run, at least one run per attack


def test_apgd_ce_lowers_accuracy_and_is_seeded(mlp):
    x = torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    y = mlp(x).argmax(1)  # clean accuracy 1
    adv, correct = apgd_ce(mlp, x, y, 8 / 255, seed=0, n_iter=30)
    assert correct.float().mean() < 0.5
    assert torch.equal(correct, mlp(adv).argmax(1) == y)
    again, _ = apgd_ce(mlp, x, y, 8 / 255, seed=0, n_iter=30)
    assert torch.equal(adv, again)


def test_apgd_t_tries_the_targets_in_logit_order():
    """Class 1 has the 2nd-highest logit but is far in L∞; class 2 is easy. APGD-T targets 1 first, and reaches it."""
    d = 48
    u1 = torch.where(torch.arange(d) % 2 == 0, 1.0, -1.0)
    u2 = torch.where(torch.arange(d) % 4 < 2, 1.0, -1.0)  # u1 · u2 = 0
    u3 = torch.ones(d)
    # z_0 = 0; z_k = −s_k·u_k·(x − ½) − m_k: margin m_k at x = ½, reachable iff m_k < ε·s_k·d
    w = torch.stack([torch.zeros(d), -0.5 * u1, -2.0 * u2, -0.1 * u3])
    b = -(w @ torch.full((d,), 0.5)) - torch.tensor([0.0, 1.0, 2.0, 3.0])
    f = linear(w, b)
    x = 0.5 + 0.01 * torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(3))
    y = torch.zeros(8, dtype=torch.long)
    eps = 0.05  # class 1 needs ε ≥ 1/24 ≈ 0.042, class 2 ≥ 1/48, class 3 ≥ 0.63
    assert (f(x).argsort(1, descending=True)[:, :2] == torch.tensor([0, 1])).all()
    assert (f(x - eps * u2.view(1, 3, 4, 4)).argmax(1) == 2).all()  # the easy class is one corner away

    adv, correct = apgd_t(f, x, y, eps, seed=0, n_iter=50)
    assert not correct.any()
    assert (f(adv).argmax(1) == 1).all()
    z = f(adv)
    assert (dlr_targeted_loss(z, y, torch.ones_like(y)) > dlr_targeted_loss(f(x), y, torch.ones_like(y))).all()


def test_dlr_targeted_needs_four_classes():
    f = linear(torch.randn(3, 12), torch.zeros(3))
    with pytest.raises(CliplabError, match="4 classes"):
        apgd_t(f, torch.rand(2, 3, 2, 2), torch.zeros(2, dtype=torch.long), 0.1)


def test_robust_accuracy_of_a_linear_model_equals_the_closed_form():
    """Robust at ε iff ∀k ≠ y: (w_y − w_k)·x + (b_y − b_k) > ε‖w_y − w_k‖₁ (the ball stays inside [0, 1])."""
    g = torch.Generator().manual_seed(4)
    n_classes, d, eps = 10, 48, 8 / 255
    w, b = torch.randn(n_classes, d, generator=g), torch.randn(n_classes, generator=g)
    f = linear(w, b)
    x = 0.3 + 0.4 * torch.rand(400, 3, 4, 4, generator=g)
    y = f(x).argmax(1)
    y[::10] = (y[::10] + 1) % n_classes  # a few wrong labels: never robust
    diff = w[y][:, None, :] - w[None, :, :]  # (B, K, d): w_y − w_k
    margin = (diff * x.flatten(1)[:, None, :]).sum(-1) + (b[y][:, None] - b[None, :])
    radius = margin / diff.abs().sum(-1)  # L∞ distance to the y/k boundary
    radius[torch.arange(len(y)), y] = float("inf")
    closest = radius.min(1).values
    keep = (closest - eps).abs() > 0.1 * eps  # away from the boundary: the answer does not hinge on the last digit
    x, y, closest = x[keep][:64], y[keep][:64], closest[keep][:64]
    expected = closest > eps
    assert 0.2 < expected.float().mean() < 0.8

    result = robust_accuracy(f, x, y, eps, seed=0)
    assert torch.equal(result.robust, expected)
    assert result.accuracy == pytest.approx(expected.float().mean().item())
    assert result.after_each["apgd-ce"] >= result.after_each["apgd-t"] == result.accuracy
    fooled = result.clean & ~result.robust
    assert (f(result.pixels[fooled]).argmax(1) != y[fooled]).all()
    assert (result.pixels - x).abs().max() <= eps + 1e-6
    chunked = robust_accuracy(f, x, y, eps, seed=0, batch_size=24)  # chunks of 24, 24, 16: same verdicts
    assert torch.equal(chunked.robust, expected) and chunked.after_each["apgd-t"] == pytest.approx(result.accuracy)
