import copy

import open_clip
import pytest
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError
from cliplab.heads.decomposition import decompose_image

TINY_VISION = dict(image_size=64, patch_size=8, width=128, layers=4, head_width=32)
TINY_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)


def _tiny_clip(**vision_overrides) -> open_clip.CLIP:
    return open_clip.CLIP(embed_dim=64, vision_cfg={**TINY_VISION, **vision_overrides}, text_cfg=TINY_TEXT).eval()


def _jitter(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random LayerNorm γ, β and attention biases: at init they are 1 and 0, which would hide a wrong
    share of β or of the out_proj bias."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.visual.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.3 * torch.randn(module.weight.shape, generator=gen))
                module.bias.copy_(0.3 * torch.randn(module.bias.shape, generator=gen))
            if isinstance(module, torch.nn.MultiheadAttention):
                module.in_proj_bias.copy_(0.3 * torch.randn(module.in_proj_bias.shape, generator=gen))
                module.out_proj.bias.copy_(0.3 * torch.randn(module.out_proj.bias.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def vit_b32():
    torch.manual_seed(0)
    model = _jitter(open_clip.create_model("ViT-B-32").eval(), seed=1)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    return model, images


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = _jitter(_tiny_clip(), seed=3)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    return model, images


@pytest.mark.parametrize("which", ["vit_b32", "tiny"])
@pytest.mark.parametrize("layers", [None, "all"])
def test_parts_sum_to_the_unit_image_embedding(which, layers, request):
    model, images = request.getfixturevalue(which)
    expected = F.normalize(model.encode_image(images).detach(), dim=-1)

    parts = decompose_image(model, images, layers=layers)

    assert (parts.embedding - expected).abs().max() <= 1e-6
    assert (parts.total() - expected).abs().max() <= 1e-5
    n_layers = len(model.visual.transformer.resblocks)
    n_heads = model.visual.transformer.resblocks[0].attn.num_heads
    n_decomposed = n_layers if layers == "all" else 4
    assert parts.heads.shape == (2, n_decomposed, n_heads, expected.shape[1])
    assert parts.mlps.shape == (2, n_layers, expected.shape[1])
    assert parts.rest.shape == (2, n_layers - n_decomposed, expected.shape[1])


def test_default_is_last_four_layers_and_heads_do_not_depend_on_the_choice(vit_b32):
    model, images = vit_b32
    last_four = decompose_image(model, images)
    every = decompose_image(model, images, layers="all")
    last_two = decompose_image(model, images, layers=2)

    assert last_four.layers == (8, 9, 10, 11)
    assert last_four.rest_layers == tuple(range(8))
    assert last_two.layers == (10, 11)
    torch.testing.assert_close(last_four.heads, every.heads[:, 8:], atol=1e-7, rtol=0)
    torch.testing.assert_close(last_two.heads, every.heads[:, 10:], atol=1e-7, rtol=0)
    # A layer left whole carries exactly the sum of its heads.
    torch.testing.assert_close(last_four.rest, every.heads[:, :8].sum(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(last_four.mlps, every.mlps, atol=1e-7, rtol=0)


def _stream_at(model, images, layer):
    """(input of block `layer`, r_cls at the output of the last block), recorded by hooks."""
    blocks = model.visual.transformer.resblocks
    seen = {}

    def keep_input(module, args):
        seen["x"] = args[0].detach()

    def keep_cls_output(module, args, output):
        seen["r"] = output[:, 0].detach()

    hooks = [blocks[layer].register_forward_pre_hook(keep_input), blocks[-1].register_forward_hook(keep_cls_output)]
    e_norm = model.encode_image(images).detach().norm(dim=-1, keepdim=True)
    for hook in hooks:
        hook.remove()
    return seen["x"], seen["r"], e_norm


def _through_ln_post(model, raw, r_cls, e_norm, share):
    """The spec's convention written out once more, independently: ((γ(c − sμ))/σ + sβ) @ proj / ‖e‖."""
    ln = model.visual.ln_post
    mu = r_cls.mean(-1, keepdim=True)
    sigma = (r_cls.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
    return ((ln.weight * (raw - share * mu)) / sigma + share * ln.bias) @ model.visual.proj / e_norm


def test_one_head_equals_the_models_attention_with_the_other_heads_masked(tiny):
    model, images = tiny
    layer, head = 2, 1
    block = model.visual.transformer.resblocks[layer]
    n_heads, head_dim = block.attn.num_heads, block.attn.head_dim
    x, r_cls, e_norm = _stream_at(model, images, layer)
    masked = copy.deepcopy(block.attn)
    with torch.no_grad():
        keep = torch.zeros_like(masked.out_proj.weight)
        keep[:, head * head_dim : (head + 1) * head_dim] = 1
        masked.out_proj.weight.mul_(keep)
        masked.out_proj.bias.div_(n_heads)  # b_O shared equally by the heads
        h = block.ln_1(x)
        raw = masked(h, h, h, need_weights=False)[0][:, 0]
        share = 1 / ((2 * 4 + 1) * n_heads)
        expected = _through_ln_post(model, raw, r_cls, e_norm, share)

    parts = decompose_image(model, images, layers="all")

    torch.testing.assert_close(parts.heads[:, layer, head], expected, atol=1e-6, rtol=0)


def test_per_token_cells_use_the_models_attention_weights_and_sum_to_the_head(tiny):
    model, images = tiny
    layer, head, token = 3, 2, 17
    block = model.visual.transformer.resblocks[layer]
    n_heads, head_dim, width = block.attn.num_heads, block.attn.head_dim, block.attn.embed_dim
    x, r_cls, e_norm = _stream_at(model, images, layer)
    n_tokens = x.shape[1]
    with torch.no_grad():
        h = block.ln_1(x)
        weights = block.attn(h, h, h, need_weights=True, average_attn_weights=False)[1][:, head, 0, token]
        w_v = block.attn.in_proj_weight[2 * width :]
        b_v = block.attn.in_proj_bias[2 * width :]
        value = (h[:, token] @ w_v.T + b_v)[:, head * head_dim : (head + 1) * head_dim]
        w_o = block.attn.out_proj.weight[:, head * head_dim : (head + 1) * head_dim]
        raw = weights[:, None] * value @ w_o.T + block.attn.out_proj.bias / (n_tokens * n_heads)
        expected = _through_ln_post(model, raw, r_cls, e_norm, 1 / ((2 * 4 + 1) * n_tokens * n_heads))

    per_token = decompose_image(model, images, per_token=True)
    summed = decompose_image(model, images)

    assert per_token.heads_per_token.shape == (2, 4, n_heads, n_tokens, 64)
    torch.testing.assert_close(per_token.heads_per_token[:, layer, head, token], expected, atol=1e-7, rtol=0)
    torch.testing.assert_close(per_token.heads_per_token.sum(3), summed.heads, atol=1e-6, rtol=0)
    assert summed.heads_per_token is None


def test_resnet_is_refused():
    model = open_clip.create_model("RN50")
    with pytest.raises(CliplabError, match="ResNet"):
        decompose_image(model, torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(ls_init_value=0.1), "LayerScale"),
        (dict(attentional_pool=True), "attention pooling"),
        (dict(pool_type="avg"), "pool_type"),
        (dict(qk_norm=True), "plain residual attention"),
    ],
)
def test_unhandled_vision_towers_are_refused(overrides, message):
    with pytest.raises(CliplabError, match=message):
        decompose_image(_tiny_clip(**overrides), torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("layers", [0, 5, "some", True])
def test_bad_layer_choice_is_refused(tiny, layers):
    model, images = tiny
    with pytest.raises(CliplabError, match="layers"):
        decompose_image(model, images, layers=layers)
