"""Exact decomposition of a CLIP ViT image embedding into direct contributions (Gandelsman et al., ICLR 2024).

For a pre-LN open_clip ``VisionTransformer`` the class-token residual stream at the output is

    r_cls = z_pre + Σ_l MLP_l + Σ_l Σ_h Σ_m A_{l,h,m}

with z_pre the ln_pre output at CLS and A_{l,h,m} the output of head h of layer l at the CLS query that
comes from source token m (attention weight × value of m through head h's slice of out_proj). The
embedding is e = ln_post(r_cls) @ proj. Once the per-image mean μ and std σ of r_cls are frozen,
ln_post is affine, so each of the K = 2L + 1 terms c (z_pre, L MLP outputs, L attention outputs) maps to

    c ↦ ((γ ⊙ (c − μ/K)) / σ + β/K) @ proj / ‖e‖

and the terms sum exactly to e/‖e‖. A layer's attention output is split further into H heads (share
1/(K·H) of μ and β each) or N·H cells (share 1/(K·N·H)); the out_proj bias b_O is shared equally over
the cells, b_O/(N·H) each, as in the reference code.

Only the CLS row of each attention map is used: the per-token tensor is (B, H, N, width) per layer,
never the (N, N, H, width) one.
"""

from dataclasses import dataclass

import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import ResidualAttentionBlock, VisionTransformer
from torch import nn

from cliplab.errors import CliplabError

DEFAULT_LAST_LAYERS = 4


@dataclass(frozen=True)
class Decomposition:
    """Direct contributions to the unit image embedding e/‖e‖, all in embedding space (last dim d).

    B images, L layers, Lk = len(layers) decomposed layers, H heads, N tokens (CLS first).

    heads: (B, Lk, H, d) head h of layer ``layers[i]`` summed over source tokens, Σ_m A_{l,h,m}.
    layers: indices l of the decomposed layers, ascending.
    mlps: (B, L, d) MLP_l at CLS for every layer l (bias included).
    ln_pre: (B, d) the ln_pre output at CLS (class + position embedding after ln_pre).
    rest: (B, L − Lk, d) whole attention output at CLS (all heads + b_O) of each layer not decomposed.
    rest_layers: indices of those layers, ascending.
    embedding: (B, d) e/‖e‖, what ``model.encode_image(images, normalize=True)`` returns.
    heads_per_token: (B, Lk, H, N, d) A_{l,h,m} per source token m, or None unless asked for;
        its sum over N equals ``heads``.
    """

    heads: torch.Tensor
    layers: tuple[int, ...]
    mlps: torch.Tensor
    ln_pre: torch.Tensor
    rest: torch.Tensor
    rest_layers: tuple[int, ...]
    embedding: torch.Tensor
    heads_per_token: torch.Tensor | None = None

    def total(self) -> torch.Tensor:
        """(B, d) the sum of every part; equals ``embedding`` up to float32 rounding."""
        return self.ln_pre + self.mlps.sum(1) + self.rest.sum(1) + self.heads.sum((1, 2))


def decompose_image(
    model: nn.Module,
    images: torch.Tensor,
    layers: None | str | int = None,
    per_token: bool = False,
) -> Decomposition:
    """Decompose the unit image embeddings of ``images`` (B, 3, H, W) into direct contributions.

    model: an open_clip CLIP (or its ``visual``) whose image tower is a float32 ``VisionTransformer``
        with CLS pooling, no LayerScale and no attention pooling.
    layers: which layers to split into heads: None = the last 4 (the paper's analyses), "all", or an
        int k = the last k. Heads of the other layers stay summed in ``rest``.
    per_token: also return ``heads_per_token`` (B, Lk, H, N, d).

    The forward pass is the module's own (its LayerNorms, MultiheadAttention and MLPs), so
    ``embedding`` matches ``encode_image``; the head split recomputes only the CLS attention row.
    """
    visual = _checked_visual(model)
    blocks = visual.transformer.resblocks
    n_layers = len(blocks)
    chosen = _chosen_layers(layers, n_layers)
    share = 1.0 / (2 * n_layers + 1)

    with torch.inference_mode():
        # open_clip's own patch + class + position embedding and ln_pre (the first half of forward).
        x = visual._embeds(images.to(torch.float32))  # (B, N, width)
        z_pre = x[:, 0]
        head_parts, attn_cls, mlp_cls = [], [], []
        for index, block in enumerate(blocks):
            h = block.ln_1(x)
            attn_out = block.attention(q_x=h)
            if index in chosen:
                head_parts.append(_cls_heads(block.attn, h, per_token))
            attn_cls.append(attn_out[:, 0])
            x = x + attn_out
            mlp_out = block.mlp(block.ln_2(x))
            mlp_cls.append(mlp_out[:, 0])
            x = x + mlp_out

        r_cls = x[:, 0]
        e = visual.ln_post(r_cls) @ visual.proj
        linear = _FrozenLnPost(visual.ln_post, visual.proj, r_cls, e.norm(dim=-1))

        n_heads = blocks[0].attn.num_heads
        stacked = torch.stack(head_parts, 1)  # (B, Lk, H, width) or (B, Lk, H, N, width)
        if per_token:
            n_tokens = x.shape[1]
            heads_per_token = linear(stacked, share / (n_heads * n_tokens))
            heads = heads_per_token.sum(3)
        else:
            heads_per_token = None
            heads = linear(stacked, share / n_heads)

        rest_layers = tuple(i for i in range(n_layers) if i not in chosen)
        rest = torch.stack(attn_cls, 1)[:, list(rest_layers)]
        return Decomposition(
            heads=heads,
            layers=chosen,
            mlps=linear(torch.stack(mlp_cls, 1), share),
            ln_pre=linear(z_pre, share),
            rest=linear(rest, share),
            rest_layers=rest_layers,
            embedding=e / e.norm(dim=-1, keepdim=True),
            heads_per_token=heads_per_token,
        )


class _FrozenLnPost:
    """ln_post with this batch's μ, σ of r_cls frozen, followed by proj and division by ‖e‖.

    A part c carrying the fraction ``share`` of the stream becomes
    ((γ ⊙ (c − share·μ))/σ + share·β) @ proj / ‖e‖, so parts whose shares sum to 1 and whose values
    sum to r_cls sum to e/‖e‖.
    """

    def __init__(self, ln: nn.LayerNorm, proj: torch.Tensor, r_cls: torch.Tensor, e_norm: torch.Tensor):
        self.gamma, self.beta, self.proj = ln.weight, ln.bias, proj
        self.mu = r_cls.mean(-1)
        self.sigma = torch.sqrt(r_cls.var(-1, unbiased=False) + ln.eps)
        self.e_norm = e_norm

    def __call__(self, parts: torch.Tensor, share: float) -> torch.Tensor:
        """parts (B, ..., width) → (B, ..., d)."""
        per_image = (-1,) + (1,) * (parts.dim() - 1)
        centred = self.gamma * (parts - share * self.mu.view(per_image)) / self.sigma.view(per_image)
        return (centred + share * self.beta) @ self.proj / self.e_norm.view(per_image)


def _cls_heads(attn: nn.MultiheadAttention, h: torch.Tensor, per_token: bool) -> torch.Tensor:
    """Head outputs at the CLS query of one layer, in the residual stream (width), b_O shared equally.

    h: (B, N, width) the ln_1 output feeding the layer.
    Returns (B, H, width) summed over source tokens, or (B, H, N, width) per source token m.
    """
    batch, n_tokens, width = h.shape
    n_heads = attn.num_heads
    head_dim = width // n_heads
    w_q, w_k, w_v = attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attn.in_proj_bias.chunk(3)
    q = (h[:, 0] @ w_q.T + b_q).view(batch, n_heads, head_dim)
    k = (h @ w_k.T + b_k).view(batch, n_tokens, n_heads, head_dim)
    v = (h @ w_v.T + b_v).view(batch, n_tokens, n_heads, head_dim)
    weights = torch.softmax(torch.einsum("bhe,bnhe->bhn", q, k) * head_dim**-0.5, dim=-1)
    w_o = attn.out_proj.weight.view(width, n_heads, head_dim)  # column block h acts on head h's output
    b_o = attn.out_proj.bias
    if per_token:
        weighted = weights.unsqueeze(-1) * v.transpose(1, 2)  # (B, H, N, head_dim)
        return torch.einsum("bhne,whe->bhnw", weighted, w_o) + b_o / (n_tokens * n_heads)
    mixed = torch.einsum("bhn,bnhe->bhe", weights, v)
    return torch.einsum("bhe,whe->bhw", mixed, w_o) + b_o / n_heads


def _chosen_layers(layers: None | str | int, n_layers: int) -> tuple[int, ...]:
    if layers is None:
        return tuple(range(max(0, n_layers - DEFAULT_LAST_LAYERS), n_layers))
    if layers == "all":
        return tuple(range(n_layers))
    if isinstance(layers, int) and not isinstance(layers, bool) and 1 <= layers <= n_layers:
        return tuple(range(n_layers - layers, n_layers))
    raise CliplabError(
        f"layers must be None (last {DEFAULT_LAST_LAYERS}), 'all' or an int in 1..{n_layers}; got {layers!r}"
    )


def _checked_visual(model: nn.Module) -> VisionTransformer:
    """The image tower if the decomposition is exact for it; otherwise a CliplabError naming why."""
    visual = getattr(model, "visual", model)
    if isinstance(visual, ModifiedResNet):
        raise CliplabError(
            "ResNet CLIP image towers have no per-layer attention heads to decompose; use a ViT model"
        )
    if not isinstance(visual, VisionTransformer):
        raise CliplabError(
            f"head decomposition needs an open_clip VisionTransformer image tower, got {type(visual).__name__}"
        )
    if visual.attn_pool is not None:
        raise CliplabError(
            "attention pooling (attentional_pool) is not handled: the embedding is not ln_post(r_cls) @ proj"
        )
    if visual.pool_type != "tok":
        raise CliplabError(
            f"pool_type {visual.pool_type!r} is not handled: only CLS-token pooling ('tok') decomposes exactly"
        )
    if visual.proj is None or visual.proj.dtype != torch.float32:
        raise CliplabError("the image tower needs a float32 proj (call model.float(); do not prune the head)")
    if not isinstance(visual.ln_post, nn.LayerNorm):
        raise CliplabError(f"ln_post must be a LayerNorm, got {type(visual.ln_post).__name__}")
    # MultiheadAttention expects (N, B, width) otherwise; open_clip 3.3 always builds vision towers batch-first.
    if not visual.transformer.batch_first:
        raise CliplabError("the vision transformer must run batch-first")
    for index, block in enumerate(visual.transformer.resblocks):
        if not isinstance(block, ResidualAttentionBlock):
            raise CliplabError(
                f"layer {index} is a {type(block).__name__} (qk-norm / scaled attention): "
                "only plain residual attention blocks decompose exactly"
            )
        if not (isinstance(block.ls_1, nn.Identity) and isinstance(block.ls_2, nn.Identity)):
            raise CliplabError(f"layer {index} uses LayerScale, which this decomposition does not handle")
    return visual
