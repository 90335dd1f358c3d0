"""Patch features of a CLIP image encoder: the last block's patch tokens and keys, CLS and embedding.

For a ViT (open_clip `VisionTransformer`) the last residual block's output is read before `ln_post`
(tokens f: (B, N, C), CLS dropped) and its attention keys are recomputed from the block's input with
the in-proj bias included (the mutual-knowledge reference omits the bias: a bug). For a ResNet
(`ModifiedResNet`) the "patches" are the positions of the last feature map before attention pooling
(7×7 for RN50 at 224 px) and the keys are the pooling's key projection of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError


@dataclass
class PatchFeatures:
    """tokens f: (B, N, C); keys: (B, N, C); cls: (B, C); embedding e: (B, D) unit norm; grid (h, w) with h·w = N."""

    tokens: torch.Tensor
    keys: torch.Tensor
    cls: torch.Tensor
    embedding: torch.Tensor
    grid: tuple[int, int]


def _vit_features(model, images: torch.Tensor) -> PatchFeatures:
    visual = model.visual
    block = visual.transformer.resblocks[-1]
    seen: dict[str, torch.Tensor] = {}

    def hook(_module, args, output):
        seen["in"], seen["out"] = args[0], output

    handle = block.register_forward_hook(hook)
    try:
        embedding = model.encode_image(images)
    finally:
        handle.remove()
    x_in, x_out = seen["in"], seen["out"]
    if not visual.transformer.batch_first:  # (L, B, C) → (B, L, C)
        x_in, x_out = x_in.transpose(0, 1), x_out.transpose(0, 1)
    n_prefix = x_out.shape[1] - visual.grid_size[0] * visual.grid_size[1]
    attn = block.attn
    c = attn.embed_dim
    w_k = attn.in_proj_weight[c : 2 * c]
    b_k = attn.in_proj_bias[c : 2 * c] if attn.in_proj_bias is not None else None
    keys = F.linear(block.ln_1(x_in), w_k, b_k)
    return PatchFeatures(
        tokens=x_out[:, n_prefix:].float(),
        keys=keys[:, n_prefix:].float(),
        cls=x_out[:, 0].float(),
        embedding=F.normalize(embedding.float(), dim=-1),
        grid=tuple(visual.grid_size),
    )


def _resnet_features(model, images: torch.Tensor) -> PatchFeatures:
    visual = model.visual
    seen: dict[str, torch.Tensor] = {}
    handle = visual.layer4.register_forward_hook(lambda _m, _a, out: seen.__setitem__("fmap", out))
    try:
        embedding = model.encode_image(images)
    finally:
        handle.remove()
    fmap = seen["fmap"]  # (B, C, h, w)
    b, c, h, w = fmap.shape
    tokens = fmap.flatten(2).transpose(1, 2)  # (B, N, C)
    pool = visual.attnpool
    pos = pool.positional_embedding.to(tokens.dtype)  # (1 + N0, C): mean query first
    if pos.shape[0] - 1 != h * w:
        raise CliplabError(
            f"ResNet feature map {h}x{w} does not match the attention pool's {pos.shape[0] - 1} positions: "
            "use the model's own image size"
        )
    keys = pool.k_proj(tokens + pos[1:])
    return PatchFeatures(
        tokens=tokens.float(),
        keys=keys.float(),
        cls=tokens.mean(dim=1).float(),
        embedding=F.normalize(embedding.float(), dim=-1),
        grid=(h, w),
    )


def patch_features(model, images: torch.Tensor) -> PatchFeatures:
    """Patch features of a batch of preprocessed images (B, 3, H, W) for an open_clip CLIP model."""
    visual = model.visual
    if hasattr(visual, "transformer") and hasattr(visual, "grid_size"):
        return _vit_features(model, images)
    if hasattr(visual, "layer4") and hasattr(visual, "attnpool"):
        return _resnet_features(model, images)
    raise CliplabError(
        f"patch features are defined for open_clip VisionTransformer and ModifiedResNet towers, not {type(visual).__name__}"
    )
