"""AFT's regularisers: the inner objective's gradient, h* as the conjugate of h, the group blocks by hand."""

import pytest
import torch

from cliplab.aft.objectives import Elastic, Group, L1Huber, ReleasedHuber, blocks, huber, inner_objective, unblocks
from cliplab.aft.training import AFTConfig
from cliplab.errors import CliplabError


@pytest.fixture(autouse=True)
def float64():
    """Exact comparisons need float64; restore the default for the other test modules."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def test_inner_objective_gradient_is_the_loss_gradient_minus_eta_over_eps_delta():
    g = torch.Generator().manual_seed(0)
    b, d = 3, 5
    x = torch.rand(b, 3, 4, 4, generator=g)
    delta = (torch.rand(b, 3, 4, 4, generator=g) - 0.5) * 0.03
    a = torch.randn(d, 48, generator=g)
    target = torch.randn(b, d, generator=g)
    eps, eta = 4 / 255, 1 / 255

    delta.requires_grad_(True)
    f = (x + delta).flatten(1) @ a.T  # a linear tower: ∇_δ ½‖f − I‖² = Aᵀ(f − I)
    j = inner_objective(f, target, delta, L1Huber(eps, eta)).sum()
    (auto,) = torch.autograd.grad(j, delta)
    analytic = ((f.detach() - target) @ a).view_as(x) - eta / eps * delta.detach()
    torch.testing.assert_close(auto, analytic, rtol=1e-10, atol=1e-12)


def test_per_sample_objectives_are_summed_not_averaged():
    f, t = torch.ones(4, 2), torch.zeros(4, 2)
    delta = torch.full((4, 3, 2, 2), 0.01)
    j = inner_objective(f, t, delta, L1Huber(0.02, 0.01))
    assert j.shape == (4,)
    expected = 0.5 * 2 - 0.01 / (2 * 0.02) * 12 * 0.01**2
    torch.testing.assert_close(j, torch.full((4,), expected))


def _sup_1d(u: torch.Tensor, h_of_d, lo: float, hi: float, n: int = 400_001) -> torch.Tensor:
    """sup_d u·d − h(d) over a fine grid on [lo, hi], per entry of u."""
    d = torch.linspace(lo, hi, n)
    return (u[:, None] * d[None, :] - h_of_d(d)[None, :]).max(dim=1).values


@pytest.mark.parametrize("eta", [0.0, 1 / 255, 3 / 255])
def test_l1_huber_dual_is_eps_times_huber(eta):
    eps = 4 / 255
    reg = L1Huber(eps, eta)
    u = torch.tensor([-2.0, -0.02, -0.004, 0.0, 0.001, 0.003, 0.01, 0.5])
    numeric = _sup_1d(u, lambda d: reg.penalty(d.view(-1, 1, 1, 1)), -eps, eps)
    closed = eps * huber(u, eta)
    torch.testing.assert_close(numeric, closed, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(reg.conjugate(u.view(1, -1, 1, 1)), closed.sum().view(1))


@pytest.mark.parametrize("eta", [0.0, 1 / 255])
def test_elastic_h_is_the_conjugate_of_its_dual(eta):
    eps, l2 = 4 / 255, 4 / 255
    reg = Elastic(eps, eta, l2)
    u = torch.tensor([-0.3, -0.05, -0.002, 0.0, 0.002, 0.01, 0.05, 0.3])
    # h is finite everywhere: sup over a range wide enough for these u (argmax d = ε₁ + 2ε₂|u| ≤ 0.2)
    numeric = _sup_1d(u, lambda d: reg.penalty(d.view(-1, 1, 1, 1)), -1.0, 1.0, n=2_000_001)
    closed = eps * huber(u, eta) + l2 * u * u
    torch.testing.assert_close(numeric, closed, rtol=1e-5, atol=1e-8)


def test_elastic_with_eta_zero_is_the_released_form():
    eps, l2 = 4 / 255, 2 / 255
    d = torch.linspace(-0.1, 0.1, 101).view(-1, 1, 1, 1)
    released = (d.abs() - eps).clamp_min(0) ** 2 / (4 * l2)
    torch.testing.assert_close(Elastic(eps, 0.0, l2).penalty(d), released.flatten())


def test_group_blocks_on_a_two_by_two_grid_by_hand():
    # 3 channels, 4×4 pixels, 2-px patches → a 2×2 grid of blocks of 12 values each
    eps, eta = 0.5, 0.1
    reg = Group(eps, eta, patch=2)
    delta = torch.zeros(1, 3, 4, 4)
    delta[0, 0, 0, 0] = 0.3  # block (0,0): one entry 0.3, one 0.4 → norm 0.5 (on the ball)
    delta[0, 2, 1, 1] = 0.4
    delta[0, :, 0:2, 2:4] = 0.5  # block (0,1): 12 entries of 0.5 → norm √3 ≈ 1.732 (outside)
    delta[0, 1, 3, 3] = -0.2  # block (1,1): norm 0.2 (inside); block (1,0) empty

    b = blocks(delta, 2)
    assert b.shape == (1, 2, 2, 12)
    torch.testing.assert_close(torch.linalg.vector_norm(b, dim=-1), torch.tensor([[[0.5, 12**0.5 * 0.5], [0.0, 0.2]]]))
    torch.testing.assert_close(unblocks(b, delta.shape, 2), delta)

    # h = η/(2ε)·‖δ‖² = 0.1 · (0.09 + 0.16 + 12·0.25 + 0.04) = 0.329
    torch.testing.assert_close(reg.penalty(delta), torch.tensor([0.329]))

    p = reg.project(delta)
    torch.testing.assert_close(p[0, :, 0:2, 2:4], torch.full((3, 2, 2), 0.5 / 12**0.5))  # scaled onto the ball
    torch.testing.assert_close(p[0, :, 0:2, 0:2], delta[0, :, 0:2, 0:2])  # on the ball: unchanged
    torch.testing.assert_close(p[0, 1, 3, 3], torch.tensor(-0.2))

    grad = torch.zeros(1, 3, 4, 4)
    grad[0, 0, 0, 0], grad[0, 1, 0, 1] = 3.0, 4.0  # block (0,0): gradient norm 5
    step = reg.ascent(grad)
    assert step[0, 0, 0, 0] == pytest.approx(0.6) and step[0, 1, 0, 1] == pytest.approx(0.8)
    assert step[0, :, 2:, :].abs().sum() == 0  # zero-gradient blocks do not move

    # dual: ε Σ_S H_η(‖u_S‖): blocks with ‖u‖ 5 (linear part) and 0.05 (quadratic part)
    u = torch.zeros(1, 3, 4, 4)
    u[0, 0, 0, 0], u[0, 1, 0, 1] = 3.0, 4.0
    u[0, 2, 3, 3] = 0.05
    expected = eps * ((5.0 - eta / 2) + 0.05**2 / (2 * eta))
    torch.testing.assert_close(reg.conjugate(u), torch.tensor([expected]))


def test_group_dual_is_the_conjugate_of_h_along_the_block_direction():
    eps, eta = 0.3, 0.2
    reg = Group(eps, eta, patch=1)
    for norm_u in (0.05, 0.2, 0.7, 3.0):
        r = torch.linspace(0, eps, 300_001)  # sup over δ_S = r·u/‖u‖
        numeric = (r * norm_u - eta / (2 * eps) * r * r).max()
        u = torch.zeros(1, 3, 1, 1)
        u[0, 0, 0, 0] = norm_u
        assert reg.conjugate(u).item() == pytest.approx(numeric.item(), rel=1e-6)


def test_released_penalty_is_eta_over_eps_times_the_mean_pixel_norm():
    eps, eta = 1 / 255, 1 / 255
    delta = torch.zeros(2, 3, 2, 2)
    delta[0, :, 0, 0] = torch.tensor([0.3, 0.4, 0.0])  # pixel norm 0.5; three zero pixels
    reg = ReleasedHuber(eps, eta)
    torch.testing.assert_close(reg.penalty(delta), torch.tensor([eta / eps * 0.5 / 4, 0.0]))
    assert reg.loss_weight == 1.0 and L1Huber(eps, eta).loss_weight == 0.5
    with pytest.raises(CliplabError):
        reg.conjugate(delta)


def test_fare_means_no_noise_and_no_penalty():
    cfg = AFTConfig(variant="fare", eps=4, eta=1, sigma=1).validated()
    assert cfg.eta == 0 and cfg.sigma == 0
    reg = cfg.regulariser(patch=8)
    assert isinstance(reg, L1Huber) and reg.eta == 0
    assert reg.penalty(torch.rand(2, 3, 8, 8)).abs().max() == 0


@pytest.mark.parametrize("change, word", [
    ({"eps": 0}, "eps"), ({"eps": -1}, "eps"), ({"eta": -0.5}, "eta"), ({"variant": "l2"}, "variant"),
    ({"steps": 0}, "steps"), ({"penalty": "mine"}, "penalty"), ({"batch_size": 2.5}, "batch_size"),
])
def test_bad_hyper_parameters_are_refused_by_name(change, word):
    with pytest.raises(CliplabError, match=word):
        AFTConfig(**change).validated()


def test_group_needs_a_patch_grid():
    with pytest.raises(CliplabError, match="ViT"):
        AFTConfig(variant="group").regulariser(patch=None)
    assert AFTConfig(variant="group").regulariser(patch=16).patch == 16
