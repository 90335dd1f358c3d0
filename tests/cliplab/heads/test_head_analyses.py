"""The five CLIP-InterpreT analyses' maths against planted, hand-computed ground truth."""

import io

import numpy as np
import pytest
import torch

from cliplab.errors import CliplabError
from cliplab.heads.maps import (
    contrastive_segmentation,
    energy_ratio,
    energy_ratios,
    heat_overlay,
    overlay,
    patch_scores,
    region_means,
    topic_maps,
    topic_segmentation,
    upsample,
)
from cliplab.heads.neighbours import (
    neighbour_grid,
    parse_heads,
    property_neighbours,
    ranked,
    top_k_dot,
)

GRID, PATCH, D = (3, 4), (2, 2), 6


def planted_tokens(inside: np.ndarray, a: np.ndarray, b: np.ndarray, cls_value: float = 100.0) -> np.ndarray:
    """(N, d): CLS = huge junk; patch tokens on `inside` (gh, gw) bool = 2a, others = b (row-major)."""
    tokens = np.where(inside.reshape(-1, 1), 2 * a, b)
    return np.concatenate([np.full((1, len(a)), cls_value), tokens]).astype(np.float32)


def unit(rng, n, d=D):
    v = rng.normal(size=(n, d))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_patch_scores_are_row_major_dot_products_without_cls():
    rng = np.random.default_rng(0)
    tokens, texts = rng.normal(size=(13, D)).astype(np.float32), unit(rng, 2)
    s = patch_scores(tokens, texts, GRID).numpy()
    assert s.shape == (2, 3, 4)
    for t in range(2):
        for r in range(3):
            for c in range(4):
                assert s[t, r, c] == pytest.approx(float(tokens[1 + 4 * r + c] @ texts[t]), abs=1e-6)
    tokens[0] = 1e6  # CLS never enters the map
    np.testing.assert_allclose(patch_scores(tokens, texts, GRID).numpy(), s)
    with pytest.raises(CliplabError, match="do not fit CLS"):
        patch_scores(tokens[:12], texts, GRID)


def test_upsample_is_bilinear_with_half_pixel_centres():
    # a ramp over patch columns, value = column index: pixel x sits at patch coordinate (x + 0.5)/p − 0.5
    patch = torch.arange(4.0).repeat(3, 1)[None]  # (1, 3, 4)
    up = upsample(patch, PATCH)[0].numpy()
    assert up.shape == (6, 8)
    x = np.arange(8)
    expected = np.clip((x + 0.5) / 2 - 0.5, 0, 3)  # clamped at the borders
    np.testing.assert_allclose(up, np.tile(expected, (6, 1)), atol=1e-6)
    np.testing.assert_allclose(upsample(torch.full((2, 3, 4), 0.7), PATCH).numpy(), 0.7, atol=1e-6)


def test_topic_segmentation_finds_the_planted_region_and_subtracts_the_text_mean():
    rng = np.random.default_rng(1)
    a, b = unit(rng, 2)
    inside = np.zeros(GRID, bool)
    inside[1, 1:3] = True
    tokens = planted_tokens(inside, a, b)
    texts = np.stack([a, b])
    res = topic_segmentation(tokens, texts, ["a", "b"], GRID, PATCH)
    assert res.maps.shape == (2, 6, 8) and res.patch.shape == (2, 3, 4)
    np.testing.assert_allclose(res.patch.sum(0), 0, atol=1e-6)  # the mean over the texts is gone
    raw = patch_scores(tokens, texts, GRID).numpy()
    np.testing.assert_allclose(res.patch, raw - raw.mean(0), atol=1e-6)
    # "a" wins where a was planted, loses elsewhere
    assert (res.patch[0][inside] > 0).all() and (res.patch[0][~inside] < 0).all()
    assert res.frame["text"].to_list() == ["a", "b"]
    assert (res.frame["peak_patch_row"][0], res.frame["peak_patch_col"][0]) in {(1, 1), (1, 2)}
    np.testing.assert_allclose(res.frame["mean_abs"].to_numpy(), np.abs(res.maps).mean((1, 2)), rtol=1e-6)
    # one text: nothing to subtract, the raw map
    single = topic_segmentation(tokens, a[None], ["a"], GRID, PATCH)
    np.testing.assert_allclose(single.patch[0], raw[0], atol=1e-6)
    with pytest.raises(CliplabError, match="text names"):
        topic_segmentation(tokens, texts, ["a"], GRID, PATCH)


def test_contrastive_segmentation_sums_every_picked_head():
    rng = np.random.default_rng(2)
    a, b = unit(rng, 2)
    heads = rng.normal(size=(5, 13, D)).astype(np.float32)
    res = contrastive_segmentation(heads, a, b, ("a", "b"), GRID, PATCH)
    per_head = [patch_scores(h, np.stack([a, b]), GRID).numpy() for h in heads]
    expected = sum(p[0] - p[1] for p in per_head)
    np.testing.assert_allclose(res.patch[0], expected, atol=1e-5)
    assert res.frame["text"].to_list() == ["a − b"]
    # every head counts (not only the last one, as in the tool): dropping one changes the map
    fewer = contrastive_segmentation(heads[:-1], a, b, ("a", "b"), GRID, PATCH)
    assert np.abs(fewer.patch - res.patch).max() > 1e-3
    # swapping the texts flips the sign
    swapped = contrastive_segmentation(heads, b, a, ("b", "a"), GRID, PATCH)
    np.testing.assert_allclose(swapped.maps, -res.maps, atol=1e-6)


def test_energy_ratio_hand_computed():
    mask = np.zeros((2, 4), bool)
    mask[:, :1] = True  # 2 inside pixels, 6 outside
    m = np.array([[3, 1, -1, 1], [-3, 1, 1, -1]], float)
    assert energy_ratio(m, mask) == pytest.approx(3.0)  # mean |S| inside 3, outside 1
    assert energy_ratio(np.stack([m, 2 * m]), mask) == pytest.approx(3.0)
    assert np.isnan(energy_ratio(m, np.ones((2, 4), bool)))
    assert np.isnan(energy_ratio(m, np.zeros((2, 4), bool)))
    with pytest.raises(CliplabError, match="differ in size"):
        energy_ratio(m, mask[:, :3])


def test_energy_ratios_per_image_match_the_single_image_maps():
    rng = np.random.default_rng(3)
    texts = unit(rng, 3)
    tokens = rng.normal(size=(4, 13, D)).astype(np.float32)
    masks = rng.random((4, 6, 8)) > 0.5
    got = energy_ratios(tokens, texts, masks, GRID, PATCH)
    for i in range(4):
        maps = topic_segmentation(tokens[i], texts, ["x", "y", "z"], GRID, PATCH).maps
        assert got[i] == pytest.approx(energy_ratio(maps, masks[i]), rel=1e-5)
    # planted: energy only on the object → ratio ≫ 1; only off the object → ≪ 1
    a, b = unit(rng, 2)
    inside = np.zeros(GRID, bool)
    inside[1:, 1:3] = True
    on = planted_tokens(inside, a, 0 * b)
    mask = upsample(torch.tensor(inside, dtype=torch.float32)[None], PATCH)[0].numpy() > 0.5
    assert energy_ratios(on[None], np.stack([a, b]), mask[None], GRID, PATCH)[0] > 3
    off = planted_tokens(~inside, a, 0 * b)
    assert energy_ratios(off[None], np.stack([a, b]), mask[None], GRID, PATCH)[0] < 1 / 3


def test_region_means_hand_computed_and_batched_maps_match_single_ones():
    maps = np.arange(2 * 2 * 2 * 3, dtype=float).reshape(2, 2, 2, 3)  # (B=2, T=2, H=2, W=3)
    regions = np.array([[[0, 0, 1], [1, 1, 2]], [[0, 0, 0], [0, 0, 0]]])
    got = region_means(maps, regions, 3)
    assert got.shape == (2, 3, 2)
    np.testing.assert_allclose(got[0, :, 0], [0.5, (2 + 3 + 4) / 3, 5])
    np.testing.assert_allclose(got[0, :, 1], [6.5, (8 + 9 + 10) / 3, 11])
    np.testing.assert_allclose(got[1, 0], [maps[1, 0].mean(), maps[1, 1].mean()])
    assert np.isnan(got[1, 1:]).all()  # regions 1, 2 absent from image 1
    rng = np.random.default_rng(7)
    tokens, texts = rng.normal(size=(3, 13, D)), unit(rng, 4)
    batched = topic_maps(tokens, texts, GRID, PATCH)
    for i in range(3):
        np.testing.assert_allclose(batched[i], topic_segmentation(tokens[i], texts, list("abcd"), GRID, PATCH).maps,
                                   atol=1e-6)


def test_overlay_colours_saturate_instead_of_wrapping():
    grey = np.full((1, 5, 3), 128, np.uint8)
    heat = np.array([[-10.0, -1.0, 0.0, 1.0, 10.0]])  # ±10 far beyond the bound 1
    out = overlay(grey, heat, bound=1.0).astype(int)
    red, blue = out[0, :, 0], out[0, :, 2]
    assert (red[3:] > blue[3:] + 100).all()  # positive: red
    assert (blue[:2] > red[:2] + 100).all()  # negative: blue
    np.testing.assert_array_equal(out[0, 4], out[0, 3])  # saturates: 10 looks like 1, not like a small value
    np.testing.assert_array_equal(out[0, 0], out[0, 1])
    assert abs(red[2] - blue[2]) <= 2  # zero: white over grey, no hue
    # monotone in the value: more positive never gets less red
    ramp = overlay(np.zeros((1, 50, 3), np.uint8), np.linspace(-2, 2, 50)[None], bound=1.5).astype(int)
    assert (np.diff(ramp[0, :, 0] - ramp[0, :, 2]) >= 0).all()


def _png_size(png: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG"
        return im.size


def test_heat_overlay_and_neighbour_grid_draw_pngs():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    w, h = _png_size(heat_overlay(img, rng.normal(size=(2, 6, 8)), ["a", "b"], "title"))
    assert w > h > 50
    frame = ranked(["x", "y", "z"], np.array([0.1, 0.3, 0.2]), 3)
    assert _png_size(neighbour_grid(img, np.stack([img] * 3), frame, "score"))[0] > 100
    assert _png_size(neighbour_grid(None, np.stack([img] * 3), frame, "score", "text: x"))[0] > 100


def test_ranked_and_top_k_dot():
    frame = ranked(["a", "b", "c", "d"], np.array([0.5, 2.0, 0.5, -1.0]), 3)
    assert frame["image_id"].to_list() == ["b", "a", "c"]  # ties keep the input order
    assert frame["rank"].to_list() == [1, 2, 3]
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(50, D))
    query = rng.normal(size=D)
    got = top_k_dot(query, vectors, [f"i{j}" for j in range(50)], 8)
    best = np.argsort(-(vectors @ query))[:8]
    assert got["image_id"].to_list() == [f"i{j}" for j in best]
    np.testing.assert_allclose(got["dot"].to_numpy(), (vectors @ query)[best])
    with pytest.raises(CliplabError, match="k must be"):
        ranked(["a"], np.zeros(1), 0)


def test_property_neighbours_use_the_cosine_of_the_head_mean():
    rng = np.random.default_rng(6)
    query = rng.normal(size=(3, D))  # 3 property heads
    mean = query.mean(0)
    refs = rng.normal(size=(20, 3, D))
    # plant: ref 7 has the same head mean up to scale 5 (cosine 1) but different individual heads
    refs[7] = 5 * mean + np.array([[1.0], [-2.0], [1.0]]) * rng.normal(size=D)
    refs[3] = -refs[7]  # cosine −1: last
    ids = [f"r{j}" for j in range(20)]
    frame = property_neighbours(query, refs, ids, k=20)
    assert frame["image_id"][0] == "r7" and frame["cosine"][0] == pytest.approx(1.0)
    assert frame["image_id"][-1] == "r3" and frame["cosine"][-1] == pytest.approx(-1.0)
    m = refs.mean(1)
    cos = m @ mean / (np.linalg.norm(m, axis=1) * np.linalg.norm(mean))
    np.testing.assert_allclose(frame.sort("image_id")["cosine"].to_numpy(),
                               cos[np.argsort(ids, kind="stable")], atol=1e-12)
    assert len(property_neighbours(query, refs, ids)) == 4  # CLIP-InterpreT's top-4
    with pytest.raises(CliplabError, match="references"):
        property_neighbours(query, refs[:, :2], ids)


def test_parse_heads():
    assert parse_heads("11.3, 10.0") == [(11, 3), (10, 0)]
    for bad in ("11", "a.b", "", "1.2.3"):
        with pytest.raises(CliplabError):
            parse_heads(bad)
