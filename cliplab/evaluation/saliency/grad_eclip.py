"""Grad-ECLIP (Zhao et al., ICML 2024, "Gradient-based Visual Explanation for Transformer-based CLIP").

In the last attention layer of the image tower the CLS output before `out_proj` is
o_cls = Σ_i A_cls,i v_i, and the image embedding depends on the patches through it. The map is

    H_i = ReLU( Σ_d w_d · v_i[d] · λ_i ),   w = ∂c/∂o_cls,   λ_i = minmax_i cos(q_cls, k_i)

with c = t · f(x)/‖f(x)‖ the cosine with the target text, w the channel weights, and λ the
"loosened" spatial weight that replaces the very sparse softmax attention of CLIP. H (h, w) is
upsampled bilinearly to the input's H × W and min-max scaled to [0, 1].

What we follow from the paper and its public code (Cyang-Zhao/Grad-Eclip, `generate_emap.py`,
`grad_eclip_image.ipynb`):
- the last residual block only; q, k, v are its in-projections of ln_1(x) WITH the in-proj bias
  (the code uses `in_proj_weight` and `in_proj_bias`);
- one λ per token from the cosine over the full width (all heads concatenated), min-max scaled over
  the patch tokens only (CLS excluded), no softmax, no temperature;
- w is the gradient w.r.t. the attention output at the CLS position before `out_proj`, and v_i the
  in-projected value of patch i (no `out_proj`, no out-proj bias), so Σ_d w_d v_i[d] is the first-order
  effect of patch i's value on c;
- ReLU after the sum over channels, bilinear upsampling, min-max to [0, 1] (the code's `save_map`
  min-max scales before resizing; we scale after, so that every method's map reaches exactly 0 and 1).

Where we depart: the reference recomputes the last layer as ONE-head attention over the full width
(`attention_layer(q, k, v, 1)`), so the c it differentiates is not the model's (Cui & Fan, 2026,
"Debunking Grad-ECLIP", make this point). Here c comes from the model's own multi-head forward:
w = W_O^T · ∂c/∂a_cls, with a the output of the last block's `attn` (after `out_proj`), read by a hook,
which is exact since a_cls = W_O o_cls + b_O. The reference is not self-consistent about λ:
`generate_emap.py` passes q and k through `out_proj` before the cosine (and calls `grad_eclip` with
arguments that do not match its signature), while the notebook passes the in-projections q, k
themselves, which we follow. The notebook's function also accepts the last n layers and sums their
maps; the paper's image maps, and `generate_emap.py`, use the last layer only, as we do.

ViT towers with CLS pooling and a plain `nn.MultiheadAttention` last block only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cliplab.errors import CliplabError
from cliplab.evaluation.saliency._common import (
    check_inputs,
    cosine_scores,
    evaluating,
    minmax,
    patch_grid,
    upsample,
)
from cliplab.pixels import PixelEncoder


def grad_eclip_grid(encoder: PixelEncoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """H on the patch grid: (B, h, w) float32 ≥ 0, before upsampling and scaling.

    pixels: (B, 3, H, W) in [0, 1]; text: (B, D) unit text embeddings. One forward, one backward.
    """
    check_inputs(pixels, text)
    visual = _checked_vit(encoder.visual)
    block = visual.transformer.resblocks[-1]
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        block.ln_1.register_forward_hook(lambda _m, _args, out: seen.__setitem__("ln_1", out)),
        block.attn.register_forward_hook(lambda _m, _args, out: seen.__setitem__("attn", out[0])),
    ]
    x = pixels.detach().requires_grad_(True)  # a gradient path even when the parameters are frozen
    try:
        with evaluating(encoder), torch.enable_grad():
            score = cosine_scores(encoder(x), text).sum()
            (grad_attn,) = torch.autograd.grad(score, seen["attn"])
    finally:
        for hook in hooks:
            hook.remove()

    h_in = seen["ln_1"].detach()
    if not visual.transformer.batch_first:  # (L, B, C) → (B, L, C)
        h_in, grad_attn = h_in.transpose(0, 1), grad_attn.transpose(0, 1)
    attn = block.attn
    with torch.no_grad(), torch.autocast(device_type=pixels.device.type, enabled=False):
        h_in = h_in.float()
        w_q, w_k, w_v = attn.in_proj_weight.float().chunk(3)
        b_q, b_k, b_v = attn.in_proj_bias.float().chunk(3) if attn.in_proj_bias is not None else (None,) * 3
        patches = patch_grid(h_in, visual.grid_size).flatten(1, 2)  # (B, N, C)
        q_cls = F.linear(h_in[:, 0], w_q, b_q)  # (B, C)
        k = F.linear(patches, w_k, b_k)  # (B, N, C)
        v = F.linear(patches, w_v, b_v)  # (B, N, C)
        w = grad_attn[:, 0].float() @ attn.out_proj.weight.float()  # ∂c/∂o_cls: (B, C)
        lam = F.cosine_similarity(q_cls[:, None], k, dim=-1)  # (B, N)
        lo, hi = lam.amin(1, keepdim=True), lam.amax(1, keepdim=True)
        lam = (lam - lo) / (hi - lo).clamp_min(torch.finfo(lam.dtype).tiny)
        emap = F.relu(torch.einsum("bc,bnc->bn", w, v) * lam)
    return emap.view(-1, *visual.grid_size)


def grad_eclip(encoder: PixelEncoder, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Grad-ECLIP maps (B, H, W) float32 in [0, 1] at the input's resolution."""
    return minmax(upsample(grad_eclip_grid(encoder, pixels, text), tuple(pixels.shape[-2:])))


def _checked_vit(visual: nn.Module) -> nn.Module:
    """The image tower if Grad-ECLIP's CLS-query construction applies to it; otherwise a CliplabError."""
    if not (hasattr(visual, "transformer") and hasattr(visual, "grid_size")):
        raise CliplabError(
            f"Grad-ECLIP needs a ViT image tower (the CLS query of its last attention layer), not {type(visual).__name__}"
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise CliplabError("Grad-ECLIP explains the CLS token: the tower must pool the CLS token ('tok', no attention pool)")
    block = visual.transformer.resblocks[-1]
    attn = getattr(block, "attn", None)
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None or not hasattr(block, "ln_1"):
        raise CliplabError(
            f"Grad-ECLIP reads q, k, v from a plain open_clip ResidualAttentionBlock; the last block is {type(block).__name__}"
        )
    return visual
