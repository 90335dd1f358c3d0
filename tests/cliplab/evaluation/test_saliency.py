"""Saliency methods against their formulas: analytic, hand-built and hand-computed references."""

import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import Transformer, VisionTransformer
from torch import nn

from cliplab.errors import CliplabError
from cliplab.evaluation.saliency import SALIENCY_METHODS
from cliplab.evaluation.saliency.grad_cam import _target_layer, grad_cam, tokens_to_grid
from cliplab.evaluation.saliency.grad_eclip import grad_eclip, grad_eclip_grid
from cliplab.evaluation.saliency.simple_gradient import (
    simple_gradient,
    simple_gradient_raw,
)
from cliplab.pixels import PixelEncoder
from cliplab.toy.clip import MEAN, STD, build_toy_clip


def _nonzero_biases(visual: nn.Module) -> None:
    """Random init leaves the attention biases at 0; a test must notice one being dropped."""
    with torch.no_grad():
        for block in visual.transformer.resblocks:
            block.attn.in_proj_bias.normal_(0, 0.5)
            block.attn.out_proj.bias.normal_(0, 0.5)


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    visual = build_toy_clip().visual
    _nonzero_biases(visual)
    return PixelEncoder(visual, MEAN, STD).eval()


@pytest.fixture(scope="module")
def batch():
    # seed chosen so that no Grad-ECLIP map of the random-init toy is all zero after its ReLU
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 3, 64, 64, generator=g), F.normalize(torch.randn(3, 128, generator=g), dim=-1)


# ---- Simple Gradient -------------------------------------------------------------------------------


class LinearTower(nn.Module):
    """f(z) = W · vec(z), on normalised pixels z."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dim, 3 * size * size, dtype=torch.float64))

    def forward(self, z):
        return z.flatten(1) @ self.weight.T


def test_simple_gradient_is_the_analytic_gradient_of_a_linear_tower():
    torch.manual_seed(0)
    tower = LinearTower(size=8, dim=5)
    encoder = PixelEncoder(tower, MEAN, STD).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    t = F.normalize(torch.randn(2, 5, dtype=torch.float64), dim=-1)

    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    z = (x - torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)) / std
    f = z.flatten(1) @ tower.weight.T
    norm = f.norm(dim=1, keepdim=True)
    u = f / norm
    ds_df = (t - (t * u).sum(1, keepdim=True) * u) / norm  # ∂(t·f/‖f‖)/∂f
    ds_dz = (ds_df @ tower.weight).view_as(x)
    expected = (ds_dz / std).abs().sum(1)  # ∂z/∂x = 1/σ_c

    raw = simple_gradient_raw(encoder, x, t)
    torch.testing.assert_close(raw, expected.float(), rtol=1e-5, atol=1e-7)
    # the gradient w.r.t. the NORMALISED tensor (the pitfall) is a different map
    assert not torch.allclose(raw, ds_dz.abs().sum(1).float(), rtol=1e-2)

    clipped = torch.minimum(expected, torch.quantile(expected.flatten(1), 0.99, dim=1)[:, None, None])
    lo, hi = clipped.amin((1, 2), keepdim=True), clipped.amax((1, 2), keepdim=True)
    expected_map = ((clipped - lo) / (hi - lo)).float()
    torch.testing.assert_close(simple_gradient(encoder, x, t), expected_map, rtol=1e-5, atol=1e-6)


# ---- Grad-CAM: the token reshape -------------------------------------------------------------------


def _pattern(shape):
    """value[b, l, c] = 100000·b + 100·l + c mod 100: every entry names its sample, token and channel."""
    b, l, c = (torch.arange(n, dtype=torch.float32) for n in shape)
    return 100000 * b[:, None, None] + 100 * l[None, :, None] + (c % 100)[None, None, :]


def _reads_back(reshape, tokens, expected) -> bool:
    try:
        out = reshape(tokens)
    except (RuntimeError, CliplabError):
        return False
    return out.shape == expected.shape and torch.equal(out, expected)


@pytest.mark.parametrize(
    "name, size, grid",
    [("ViT-B-16", 224, (14, 14)), ("ViT-B-32", 224, (7, 7)), ("toy", 64, (8, 8))],
)
def test_grad_cam_reads_block_minus_2_tokens_on_the_model_grid(name, size, grid):
    torch.manual_seed(0)
    visual = build_toy_clip().visual if name == "toy" else open_clip.create_model(name, pretrained=None).visual
    assert tuple(visual.grid_size) == grid
    layer, reshape = _target_layer(visual)
    assert layer is visual.transformer.resblocks[-2]

    seen = {}
    hook = layer.register_forward_hook(lambda _m, _a, out: seen.__setitem__("shape", out.shape))
    with torch.no_grad():
        visual(torch.rand(2, 3, size, size))
    hook.remove()
    h, w = grid
    n_tokens = seen["shape"][1]
    assert seen["shape"][0] == 2 and n_tokens == 1 + h * w  # the model's own (B, L, C) layout

    tokens = _pattern(seen["shape"])
    index = 1 + torch.arange(h * w, dtype=torch.float32).view(h, w)  # patch (r, c) is token 1 + r·w + c
    channel = (torch.arange(seen["shape"][2]) % 100).float()
    expected = torch.stack(
        [100000 * b + 100 * index[None] + channel[:, None, None] for b in range(2)]
    )  # (B, C, h, w)
    assert _reads_back(reshape, tokens, expected)
    assert _reads_back(lambda t: tokens_to_grid(t, grid, batch_first=False), tokens.transpose(0, 1), expected)
    # wrong: the sequence-first reading of batch-first tokens, or a grid that is not the model's
    assert not _reads_back(lambda t: tokens_to_grid(t, grid, batch_first=False), tokens, expected)
    assert not _reads_back(lambda t: tokens_to_grid(t, (h + 1, w - 1), batch_first=True), tokens, expected)
    assert not _reads_back(lambda t: t[1:].reshape(t.shape[1], 16, 16, -1).permute(0, 3, 1, 2), tokens, expected)


def test_grad_cam_equals_a_hand_computed_cam(toy, batch):
    x, t = batch
    block = toy.visual.transformer.resblocks[-2]
    seen = {}
    hook = block.register_forward_hook(lambda _m, _a, out: seen.__setitem__("a", out))
    score = (F.normalize(toy(x), dim=-1) * t).sum()
    hook.remove()
    (grad,) = torch.autograd.grad(score, seen["a"])
    acts = seen["a"].detach()[:, 1:].reshape(3, 8, 8, -1).permute(0, 3, 1, 2)
    grads = grad[:, 1:].reshape(3, 8, 8, -1).permute(0, 3, 1, 2)
    cam = F.relu((grads.mean((2, 3), keepdim=True) * acts).sum(1))
    cam = (cam - cam.amin((1, 2), keepdim=True)) / cam.amax((1, 2), keepdim=True)
    cam = F.interpolate(cam[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    cam = (cam - cam.amin((1, 2), keepdim=True)) / cam.amax((1, 2), keepdim=True)
    torch.testing.assert_close(grad_cam(toy, x, t), cam, atol=1e-4, rtol=0)


# ---- Grad-ECLIP by hand ----------------------------------------------------------------------------


def test_grad_eclip_equals_the_formula_on_a_one_layer_vit():
    torch.manual_seed(0)
    visual = VisionTransformer(image_size=32, patch_size=8, width=64, layers=1, heads=4, mlp_ratio=4.0, output_dim=24)
    _nonzero_biases(visual)
    encoder = PixelEncoder(visual, MEAN, STD).eval()
    x = torch.rand(2, 3, 32, 32)
    t = F.normalize(torch.randn(2, 24, generator=torch.Generator().manual_seed(0)), dim=-1)

    block = visual.transformer.resblocks[0]
    n_heads, width = 4, 64
    with torch.no_grad():
        tokens = visual._embeds(encoder.normalize(x))  # (B, N, C), CLS first
        h = block.ln_1(tokens)
        q, k, v = F.linear(h, block.attn.in_proj_weight, block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = lambda m: m.view(2, 17, n_heads, width // n_heads)
        attn = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", heads(q), heads(k)) / (width // n_heads) ** 0.5, dim=-1)
        o = torch.einsum("bhqk,bkhd->bqhd", attn, heads(v)).reshape(2, 17, width)  # before out_proj
    o_cls = o[:, 0].clone().requires_grad_(True)
    y_cls = tokens[:, 0] + F.linear(o_cls, block.attn.out_proj.weight, block.attn.out_proj.bias)
    z_cls = y_cls + block.mlp(block.ln_2(y_cls))
    e = visual.ln_post(z_cls) @ visual.proj
    with torch.no_grad():
        torch.testing.assert_close(e, visual(encoder.normalize(x)), atol=1e-5, rtol=1e-5)
    (w,) = torch.autograd.grad((F.normalize(e, dim=-1) * t).sum(), o_cls)  # ∂c/∂o_cls, (B, C)

    def by_hand(q, k, v):
        cos = torch.einsum("bc,bnc->bn", F.normalize(q[:, 0], dim=-1), F.normalize(k[:, 1:], dim=-1))
        lam = (cos - cos.amin(1, keepdim=True)) / (cos.amax(1, keepdim=True) - cos.amin(1, keepdim=True))
        return F.relu(torch.einsum("bc,bnc->bn", w, v[:, 1:]) * lam).view(2, 4, 4)

    expected = by_hand(q, k, v)
    got = grad_eclip_grid(encoder, x, t)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    assert (expected.flatten(1) > 0).sum(1).min() > 1
    # the in-proj bias matters: leaving it out (the features.py pitfall) gives another map
    q0, k0, v0 = F.linear(h, block.attn.in_proj_weight).chunk(3, dim=-1)
    assert not torch.allclose(got, by_hand(q0, k0, v0), atol=1e-3)

    full = grad_eclip(encoder, x, t)
    up = F.interpolate(expected[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    up = (up - up.amin((1, 2), keepdim=True)) / (up.amax((1, 2), keepdim=True) - up.amin((1, 2), keepdim=True))
    torch.testing.assert_close(full, up, atol=1e-5, rtol=1e-4)


# ---- All methods: contract -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS))
def test_maps_shape_range_and_batch_independence_on_the_toy(name, toy, batch):
    x, t = batch
    maps = SALIENCY_METHODS[name](toy, x, t)
    assert maps.shape == (3, 64, 64) and maps.dtype == torch.float32
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.amax((1, 2)) > 0.999).all()
    alone = SALIENCY_METHODS[name](toy, x[1:2], t[1:2])
    torch.testing.assert_close(alone[0], maps[1], atol=1e-5, rtol=0)
    # each map follows its own text: another target gives another map
    assert not torch.allclose(SALIENCY_METHODS[name](toy, x, t.roll(1, 0)), maps, atol=1e-3)


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS))
def test_no_side_effects_on_the_encoder(name, batch):
    torch.manual_seed(0)
    encoder = PixelEncoder(build_toy_clip().visual, MEAN, STD).train()
    frozen = encoder.visual.transformer.resblocks[0].attn.in_proj_weight
    frozen.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in encoder.named_parameters()}
    x, t = batch
    with torch.no_grad():  # the methods switch gradients back on for themselves
        SALIENCY_METHODS[name](encoder, x, t)
    assert encoder.training
    assert {n: p.requires_grad for n, p in encoder.named_parameters()} == flags
    assert all(p.grad is None for p in encoder.parameters())
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in encoder.modules())
    assert not x.requires_grad


@pytest.fixture(scope="module")
def sequence_first_toy(toy):
    """The same weights in a (L, B, C) transformer, as open_clip < 2.26 ran it."""
    seq = copy.deepcopy(toy)
    seq.visual.transformer = Transformer(width=128, layers=4, heads=4, batch_first=False)
    seq.visual.transformer.load_state_dict(toy.visual.transformer.state_dict())
    return seq.eval()


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS))
def test_sequence_first_transformer_gives_the_same_maps(name, toy, sequence_first_toy, batch):
    x, t = batch
    torch.testing.assert_close(
        SALIENCY_METHODS[name](sequence_first_toy, x, t), SALIENCY_METHODS[name](toy, x, t), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("name", sorted(SALIENCY_METHODS))
def test_under_cpu_autocast_bf16(name, toy, batch):
    x, t = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = SALIENCY_METHODS[name](toy, x[:2], t[:2])
    assert maps.shape == (2, 64, 64) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    tower = ModifiedResNet(layers=[1, 1, 1, 1], output_dim=32, heads=2, image_size=64, width=8)
    return PixelEncoder(tower, MEAN, STD)


def test_resnet_tower_grad_cam_on_layer4_and_grad_eclip_refuses(resnet):
    x = torch.rand(2, 3, 64, 64)
    t = F.normalize(torch.randn(2, 32), dim=-1)
    layer, _ = _target_layer(resnet.visual)
    assert layer is resnet.visual.layer4
    resnet.train()
    running = resnet.visual.bn1.running_mean.clone()
    for method in (grad_cam, simple_gradient):
        maps = method(resnet, x, t)
        assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1
        torch.testing.assert_close(method(resnet, x[:1], t[:1])[0], maps[0], atol=1e-5, rtol=0)  # BatchNorm in eval
    assert resnet.training and torch.equal(resnet.visual.bn1.running_mean, running)
    with pytest.raises(CliplabError, match="ViT"):
        grad_eclip(resnet, x, t)


def test_one_text_per_image(toy, batch):
    x, t = batch
    for method in SALIENCY_METHODS.values():
        with pytest.raises(CliplabError, match="one row per image"):
            method(toy, x, t[:2])
