"""AFT's PGD on the toy CLIP's image tower: the feasible set, per-sample independence, FARE's momentum."""

import pytest
import torch

from cliplab.aft.objectives import Group, L1Huber, inner_objective
from cliplab.aft.pgd import attack_distance, generators, pgd_huber, sample_seeds
from cliplab.pixels import PixelEncoder
from cliplab.toy.clip import MEAN, STD, build_toy_clip


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return PixelEncoder(build_toy_clip().visual.double().eval(), MEAN, STD)


@pytest.fixture(scope="module")
def images():
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x[0, :, :8, :8] = 0.0  # pixels on the box faces: the [0, 1] projection must bind there
    x[1, :, -8:, -8:] = 1.0
    return x


def _target(encoder, x):
    with torch.no_grad():
        return encoder(x) + 0.01


def test_every_iterate_stays_in_the_ball_and_in_the_box(encoder, images):
    eps = 4 / 255
    seen = []

    def check(k, delta):
        seen.append(k)
        assert delta.abs().max() <= eps + 1e-12
        assert (images + delta).min() >= 0 and (images + delta).max() <= 1

    gens = generators([1, 2, 3, 4], "cpu")
    delta = pgd_huber(encoder, images, _target(encoder, images), L1Huber(eps, 1 / 255), gens, steps=5, on_iterate=check)
    assert seen == list(range(5))
    assert (delta[0, :, :8, :8] >= 0).all() and (delta[1, :, -8:, -8:] <= 0).all()
    assert delta.abs().max() > 0.9 * eps  # it moved to the boundary somewhere


def test_group_iterates_stay_in_every_block_ball(encoder, images):
    eps = 0.05
    reg = Group(eps, 1 / 255, patch=8)

    def check(k, delta):
        from cliplab.aft.objectives import blocks

        assert torch.linalg.vector_norm(blocks(delta, 8), dim=-1).max() <= eps + 1e-12
        assert (images + delta).min() >= 0 and (images + delta).max() <= 1

    pgd_huber(encoder, images, _target(encoder, images), reg, generators([5, 6, 7, 8], "cpu"), steps=3, on_iterate=check)


def test_pgd_raises_the_inner_objective(encoder, images):
    reg = L1Huber(4 / 255, 1 / 255)
    target = _target(encoder, images)
    gens = generators([1, 2, 3, 4], "cpu")
    delta = pgd_huber(encoder, images, target, reg, gens, steps=10, sigma=0.0)
    with torch.no_grad():
        before = inner_objective(encoder(images), target, torch.zeros_like(images), reg)
        after = inner_objective(encoder(images + delta), target, delta, reg)
    assert (after > before).all()


def test_a_samples_delta_does_not_depend_on_its_batch(encoder, images):
    reg = L1Huber(4 / 255, 1 / 255)
    seeds = sample_seeds(0, 7, torch.arange(4))
    target = _target(encoder, images)
    whole = pgd_huber(encoder, images, target, reg, generators(seeds, "cpu"), steps=4)
    order = [3, 0, 2]
    part = pgd_huber(encoder, images[order], target[order], reg, generators([seeds[i] for i in order], "cpu"), steps=4)
    torch.testing.assert_close(part, whole[order], rtol=0, atol=1e-12)


def test_fare_momentum_pgd_is_sign_pgd_under_linf(encoder, images):
    reg = L1Huber(4 / 255, 0.0)
    target = _target(encoder, images)
    plain = pgd_huber(encoder, images, target, reg, generators([9, 8, 7, 6], "cpu"), steps=6, sigma=0.0)
    fare = pgd_huber(encoder, images, target, reg, generators([9, 8, 7, 6], "cpu"), steps=6, sigma=0.0, momentum=0.9)
    torch.testing.assert_close(fare, plain, rtol=0, atol=0)


def test_noise_and_start_come_from_the_seeds(encoder, images):
    reg = L1Huber(4 / 255, 1 / 255)
    target = _target(encoder, images)
    a = pgd_huber(encoder, images, target, reg, generators([1, 2, 3, 4], "cpu"), steps=2)
    b = pgd_huber(encoder, images, target, reg, generators([1, 2, 3, 4], "cpu"), steps=2)
    c = pgd_huber(encoder, images, target, reg, generators([1, 2, 3, 5], "cpu"), steps=2)
    assert torch.equal(a, b)
    assert torch.equal(a[:3], c[:3]) and not torch.equal(a[3], c[3])


def test_sample_seeds_differ_by_step_index_and_seed():
    s = sample_seeds(0, 0, torch.arange(3)) + sample_seeds(0, 1, torch.arange(3)) + sample_seeds(1, 0, torch.arange(3))
    assert len(set(s)) == 9 and all(0 <= v < 2**63 for v in s)


def test_attack_distance_grows_with_the_budget(encoder, images):
    small = attack_distance(encoder, images, 0.5 / 255, generators([1, 2, 3, 4], "cpu"), steps=5, step_size=0.25 / 255)
    large = attack_distance(encoder, images, 8 / 255, generators([1, 2, 3, 4], "cpu"), steps=5, step_size=2 / 255)
    assert small.shape == (4,) and (large > small).all() and (large <= 2).all()
