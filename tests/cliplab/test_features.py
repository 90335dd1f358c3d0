"""Patch features against the model's own computation: tokens are pre-ln_post, keys carry the in-proj bias."""

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.features import patch_features
from cliplab.toy.clip import build_toy_clip


@pytest.fixture(scope="module")
def toy():
    torch.manual_seed(0)
    m = build_toy_clip().eval().requires_grad_(False)
    with torch.no_grad():  # a non-zero bias, so a test would notice it missing
        m.visual.transformer.resblocks[-1].attn.in_proj_bias.normal_(0, 0.5)
    return m


def test_vit_shapes_and_embedding(toy):
    x = torch.randn(3, 3, 64, 64)
    with torch.inference_mode():
        f = patch_features(toy, x)
        ref = F.normalize(toy.encode_image(x), dim=-1)
    assert f.tokens.shape == (3, 64, 128) and f.keys.shape == (3, 64, 128) and f.cls.shape == (3, 128)
    assert f.grid == (8, 8)
    torch.testing.assert_close(f.embedding, ref, atol=1e-6, rtol=0)
    # pre-ln_post: ln_post(CLS) @ proj is the image embedding
    torch.testing.assert_close(F.normalize(toy.visual.ln_post(f.cls) @ toy.visual.proj, dim=-1), ref, atol=1e-5, rtol=0)


def test_vit_keys_reproduce_the_last_block(toy):
    """Attention of the last block recomputed from our keys (q, v from the same in-proj) gives its output."""
    x = torch.randn(2, 3, 64, 64)
    blk = toy.visual.transformer.resblocks[-1]
    seen = {}
    h = blk.register_forward_hook(lambda _m, a, o: seen.update(inp=a[0], out=o))
    with torch.inference_mode():
        f = patch_features(toy, x)
        toy.encode_image(x)
        h.remove()
        xin = seen["inp"]
        ln = blk.ln_1(xin)
        c, nh = blk.attn.embed_dim, blk.attn.num_heads
        w, b = blk.attn.in_proj_weight, blk.attn.in_proj_bias
        q = F.linear(ln, w[:c], b[:c])
        k = F.linear(ln, w[c:2 * c], b[c:2 * c])
        v = F.linear(ln, w[2 * c:], b[2 * c:])
        torch.testing.assert_close(k[:, 1:], f.keys, atol=1e-5, rtol=0)
        split = lambda t: t.view(t.shape[0], t.shape[1], nh, c // nh).transpose(1, 2)
        att = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(ln.shape)
        y = xin + blk.ls_1(blk.attn.out_proj(att))
        y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
        torch.testing.assert_close(y[:, 1:], f.tokens, atol=1e-4, rtol=0)
        # without the bias the keys differ: the reference's bug would be caught
        assert (F.linear(ln, w[c:2 * c])[:, 1:] - f.keys).abs().max() > 0.1


def test_resnet_positions_are_the_last_feature_map():
    torch.manual_seed(0)
    m = open_clip.create_model("RN50", pretrained=None).eval().requires_grad_(False)
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        f = patch_features(m, x)
        ref = F.normalize(m.encode_image(x), dim=-1)
        fmap = f.tokens.transpose(1, 2).reshape(1, 2048, 7, 7)
        again = F.normalize(m.visual.attnpool(fmap), dim=-1)
    assert f.tokens.shape == (1, 49, 2048) and f.grid == (7, 7) and f.keys.shape == (1, 49, 1024 * 2)
    torch.testing.assert_close(f.embedding, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(again, ref, atol=1e-5, rtol=0)


def test_unknown_tower_is_refused():
    class Odd(torch.nn.Module):
        visual = torch.nn.Linear(2, 2)

    with pytest.raises(CliplabError, match="VisionTransformer and ModifiedResNet"):
        patch_features(Odd(), torch.zeros(1, 3, 8, 8))
