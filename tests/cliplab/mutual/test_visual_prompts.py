"""Visual prompting (mutual-knowledge step 6): regions, ellipse fit, the three prompts, the concept feature."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from cliplab.mutual.visual_prompts import (
    concept_features,
    concept_regions,
    ellipse_masks,
    fit_ellipse,
    grayscale,
    visual_prompts,
)


def _ellipse_mask(h, w, cx, cy, a, b, theta):
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xs - cx) * math.cos(theta) + (ys - cy) * math.sin(theta)
    v = -(xs - cx) * math.sin(theta) + (ys - cy) * math.cos(theta)
    return (u / a) ** 2 + (v / b) ** 2 <= 1


@pytest.mark.parametrize("cx,cy,a,b,theta", [(30, 22, 18, 7, 0.4), (20, 30, 12, 12, 0.0), (33, 28, 20, 5, -1.1)])
def test_fit_ellipse_recovers_a_drawn_ellipse(cx, cy, a, b, theta):
    mask = torch.from_numpy(_ellipse_mask(64, 64, cx, cy, a, b, theta))[None]
    got = fit_ellipse(mask)[0].numpy()
    assert got[0] == pytest.approx(cx, abs=0.2) and got[1] == pytest.approx(cy, abs=0.2)
    assert got[2] == pytest.approx(a, rel=0.05) and got[3] == pytest.approx(b, rel=0.08)
    if a != b:  # orientation is defined modulo π
        assert math.cos(2 * (got[4] - theta)) > 0.995


def test_fit_ellipse_empty_and_single_pixel():
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[1, 3, 5] = True
    got = fit_ellipse(masks)
    assert torch.all(got[0] == 0)
    assert got[1, 0] == 5 and got[1, 1] == 3 and got[1, 2] == pytest.approx(got[1, 3]) and got[1, 2] > 0.5
    filled, outline = ellipse_masks(got, (8, 8))
    assert not filled[0].any() and filled[1, 3, 5] and filled[1].sum() == 1 and outline[1, 3, 5]


def test_ellipse_masks_outline_is_one_pixel_boundary_of_the_fill():
    params = torch.tensor([[31.0, 30.0, 20.0, 9.0, 0.5]])
    filled, outline = ellipse_masks(params, (64, 64))
    ref = _ellipse_mask(64, 64, 31, 30, 20, 9, 0.5)
    assert np.array_equal(filled[0].numpy(), ref)
    interior = ndimage.binary_erosion(ref, structure=ndimage.generate_binary_structure(2, 1))
    assert np.array_equal(outline[0].numpy(), ref & ~interior)
    # a closed curve around the centre: every row crossing the ellipse has outline pixels at its two ends
    for y in range(64):
        xs = np.nonzero(ref[y])[0]
        if len(xs):
            assert outline[0, y, xs[0]] and outline[0, y, xs[-1]]


def test_prompts_red_outline_gray_and_blur_outside_only():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, generator=g)
    ellipses = torch.tensor([[16.0, 16.0, 8.0, 5.0, 0.0], [10.0, 20.0, 6.0, 6.0, 0.0]])
    prompts = visual_prompts(images, ellipses, blur_kernel=5, blur_sigma=1.0)
    assert prompts.shape == (2, 3, 3, 32, 32)
    filled, outline = ellipse_masks(ellipses, (32, 32))
    inside = filled & ~outline
    red = torch.tensor([1.0, 0.0, 0.0])[:, None]
    for p in range(3):
        assert torch.equal(prompts[:, p].permute(0, 2, 3, 1)[outline], red.T.expand(int(outline.sum()), 3))
        # inside the ellipse (not on the line) every prompt shows the untouched image
        assert torch.equal(prompts[:, p].permute(0, 2, 3, 1)[inside], images.permute(0, 2, 3, 1)[inside])
    outside = ~filled
    assert torch.equal(prompts[:, 0].permute(0, 2, 3, 1)[outside], images.permute(0, 2, 3, 1)[outside])
    gray = prompts[:, 1].permute(0, 2, 3, 1)[outside]
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    luma = (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[outside]
    assert torch.allclose(gray[:, 0], luma, atol=1e-6)
    blurred = prompts[:, 2].permute(0, 2, 3, 1)[outside]
    assert blurred.var() < images.permute(0, 2, 3, 1)[outside].var() * 0.5  # noise is smoothed out


def test_grayscale_keeps_gray_pixels():
    x = torch.full((1, 3, 2, 2), 0.3)
    assert torch.allclose(grayscale(x), x)


def test_concept_regions_keep_largest_component_per_concept():
    grid = (4, 4)
    concepts = np.full((2, 16), -1)
    concepts[0, [0, 1, 4]] = 2  # a 3-patch blob ...
    concepts[0, 15] = 2  # ... and a stray patch of the same concept
    concepts[0, [10, 11]] = 0
    regions = concept_regions(concepts, grid, n_concepts=5)
    assert regions.shape == (2, 5, 4, 4)
    assert regions[0, 2].sum() == 3 and not regions[0, 2].reshape(-1)[15]
    assert regions[0, 0].sum() == 2 and not regions[0, [1, 3, 4]].any() and not regions[1].any()


def test_concept_features_average_unit_embeddings_without_renormalising():
    calls = []

    def encode(x):  # a real linear "encoder" so the expected value is computable by hand
        calls.append(x.shape[0])
        return x.flatten(1)[:, :4] * torch.tensor([1.0, 2.0, 3.0, 4.0])

    prompts = torch.rand(5, 3, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    feats = concept_features(encode, prompts)
    assert calls == [15]  # one batched call for all K·P prompts
    unit = torch.nn.functional.normalize(prompts.flatten(2)[:, :, :4] * torch.tensor([1.0, 2.0, 3.0, 4.0]), dim=-1)
    assert torch.allclose(feats, unit.mean(1))
    assert (feats.norm(dim=-1) < 1.0 + 1e-6).all() and (feats.norm(dim=-1) < 0.999).any()
