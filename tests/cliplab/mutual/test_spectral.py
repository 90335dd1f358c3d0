import numpy as np
import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.mutual.cleanup import largest_components
from cliplab.mutual.spectral import prominent_patches, sign_rule


@pytest.mark.parametrize("n_positive, flipped", [(3, False), (5, False), (7, True), (10, False)])
def test_sign_rule_makes_positives_the_minority(n_positive, flipped):
    v = torch.tensor([1.0] * n_positive + [-1.0] * (10 - n_positive))
    assert torch.equal(sign_rule(v), -v if flipped else v)


def test_sign_rule_applies_per_row():
    rows = torch.tensor([[1.0] * k + [-1.0] * (10 - k) for k in (3, 5, 7, 10)])
    expected = rows * torch.tensor([[1.0], [1.0], [-1.0], [1.0]])
    assert torch.equal(sign_rule(rows), expected)


def planted(fg_sizes=(10, 16, 20, 24), n=64, c=32, seed=0):
    """Patches sharing a strong common direction; foreground and background differ in a second one."""
    g = torch.Generator().manual_seed(seed)
    common, fg_dir, bg_dir = torch.linalg.qr(torch.randn(c, 3, generator=g)).Q.T
    truth = torch.zeros(len(fg_sizes), n, dtype=torch.bool)
    for i, size in enumerate(fg_sizes):
        truth[i, torch.randperm(n, generator=g)[:size]] = True
    direction = torch.where(truth[..., None], fg_dir, bg_dir)
    f = 2 * common + direction + 0.05 * torch.randn(len(fg_sizes), n, c, generator=g)
    # patch norms vary a lot: only the directions may decide
    return f * torch.empty(len(fg_sizes), n, 1).uniform_(0.5, 20, generator=g), truth


@pytest.mark.parametrize("method, kwargs", [("joint", {}), ("per_image", {}), ("fiedler", {"threshold": 0.9})])
def test_prominent_patches_recover_planted_foreground(method, kwargs):
    f, truth = planted()
    assert torch.equal(prominent_patches(f, method, **kwargs), truth)


def test_joint_decomposes_half_precision_features_in_float32():
    f, truth = planted()
    assert torch.equal(prominent_patches(f.half(), "joint"), truth)


@pytest.mark.parametrize("method, kwargs", [("per_image", {}), ("fiedler", {"threshold": 0.9})])
def test_per_image_methods_do_not_depend_on_the_batch(method, kwargs):
    f, truth = planted()
    alone = torch.cat([prominent_patches(f[i : i + 1], method, **kwargs) for i in range(len(f))])
    assert torch.equal(alone, truth)


def test_one_image_class():
    f, truth = planted(fg_sizes=(12,))
    assert torch.equal(prominent_patches(f, "joint"), truth)


def test_unknown_method_is_refused():
    with pytest.raises(CliplabError):
        prominent_patches(torch.randn(1, 4, 3), "tokencut")


def grid(rows):
    return np.array([[ch == "#" for ch in row] for row in rows.split()])


def test_cleanup_connects_diagonal_neighbours():
    mask = grid("#.... .#... ..#.. ..... ....#")
    # 8-connectivity: the diagonal is one component of 3; the lone corner (1 patch) is dropped
    assert np.array_equal(largest_components(mask[None])[0], grid("#.... .#... ..#.. ..... ....."))


def test_cleanup_keeps_the_second_component_from_five_patches():
    four = grid("####.... ####.... ........ ........ ##...... ##.....#")
    five = grid("####.... ####.... ........ ........ ###..... ##.....#")
    three_big = grid("####.... ####.... ........ ......## ###...## ##....##")
    out = largest_components(np.stack([four, five, three_big]))
    assert np.array_equal(out[0], grid("####.... ####.... ........ ........ ........ ........"))
    assert np.array_equal(out[1], grid("####.... ####.... ........ ........ ###..... ##......"))
    # only the two largest survive, however big the third
    assert np.array_equal(out[2], grid("####.... ####.... ........ ......## ......## ......##"))


def test_cleanup_of_a_batch_equals_cleanup_of_each_image():
    rng = np.random.default_rng(0)
    masks = rng.random((6, 7, 7)) < 0.35
    alone = np.concatenate([largest_components(m[None]) for m in masks])
    assert np.array_equal(largest_components(masks), alone)


def test_cleanup_of_an_image_without_foreground_is_empty():
    masks = np.zeros((2, 4, 4), dtype=bool)
    assert not largest_components(masks).any()
    masks[1, 0, 0] = True
    out = largest_components(masks)
    assert not out[0].any() and out[1, 0, 0] and out.sum() == 1
