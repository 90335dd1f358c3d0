"""Per-head text maps over an image: topic and contrastive segmentation (CLIP-InterpreT, Madasu et al.).

Input is a head's per-token direct contribution to the unit image embedding (``Decomposition.
heads_per_token`` of ``cliplab.heads.decomposition``: A_{l,h,m} for source tokens m, CLS first) and unit
text embeddings t (no template). For one head and one text the map is

    S_t(m) = A_{l,h,m} · t        m = 1..N−1 (CLS excluded), laid out on the (gh, gw) patch grid,

then bilinearly upsampled by the patch size (ph, pw) to the (gh·ph, gw·pw) pixels the model saw.

* Topic segmentation (analysis 2): S_t for the texts shown, minus their mean over the texts
  (so each map shows where *this* text beats the others); with a single text nothing is subtracted.
* Contrastive segmentation (analysis 3): Σ_{(l,h) ∈ heads} (S_a − S_b), the heads the user picks
  (default: every decomposed head, i.e. all heads of the last 4 layers). CLIP-InterpreT's tool ends
  up using one head because of a type mismatch; here every picked head contributes.

Maps stay float32 from start to end; heat maps are drawn with a symmetric diverging colour scale
(zero = white), so nothing wraps around the way the tool's uint8 cast of ``map * 255`` does.

The ground-truth score used on toyworld is ``energy_ratio``: mean |S| over pixels inside the object
mask divided by mean |S| outside (> 1: the map's energy sits on the object).
"""

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F

from cliplab.errors import CliplabError


@dataclass(frozen=True)
class HeadMaps:
    """maps: (T, H, W) float32 pixel maps (H = gh·ph, W = gw·pw); patch: (T, gh, gw) before upsampling.

    frame: one row per text: text, min, max, mean, mean_abs of its pixel map and the patch (row, col)
    where it peaks. png: the heat maps over the image, or None when not drawn.
    """

    maps: np.ndarray
    patch: np.ndarray
    frame: pl.DataFrame
    png: bytes | None = None


def patch_scores(tokens: torch.Tensor, texts: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """S: (T, gh, gw) = per-token contributions (N, d) (CLS first, dropped) · unit texts (T, d)."""
    tokens, texts = torch.as_tensor(tokens, dtype=torch.float32), torch.as_tensor(texts, dtype=torch.float32)
    gh, gw = grid
    if tokens.dim() != 2 or texts.dim() != 2 or tokens.shape[1] != texts.shape[1]:
        raise CliplabError(f"tokens must be (N, d) and texts (T, d) with the same d; got {tuple(tokens.shape)}, "
                           f"{tuple(texts.shape)}")
    if tokens.shape[0] != gh * gw + 1:
        raise CliplabError(f"{tokens.shape[0]} tokens do not fit CLS + a {gh}x{gw} patch grid")
    return (tokens[1:] @ texts.T).T.reshape(len(texts), gh, gw)


def upsample(patch: torch.Tensor, patch_size: tuple[int, int]) -> torch.Tensor:
    """(T, gh, gw) → (T, gh·ph, gw·pw): bilinear, half-pixel centres (``F.interpolate``, align_corners=False)."""
    return F.interpolate(patch[None].float(), scale_factor=tuple(patch_size), mode="bilinear", align_corners=False)[0]


def topic_segmentation(tokens, texts, text_names: list[str], grid: tuple[int, int],
                       patch_size: tuple[int, int], subtract_mean: bool = True) -> HeadMaps:
    """Analysis 2: one head's maps for T texts. tokens: (N, d) A_{l,h,m}; texts: (T, d) unit embeddings.

    subtract_mean: subtract the mean map over the T texts (the tool's convention); ignored for T = 1.
    """
    patch = patch_scores(tokens, texts, grid)
    if len(text_names) != patch.shape[0]:
        raise CliplabError(f"{len(text_names)} text names for {patch.shape[0]} text embeddings")
    if subtract_mean and patch.shape[0] > 1:
        patch = patch - patch.mean(0, keepdim=True)
    return _result(patch, patch_size, text_names)


def contrastive_segmentation(tokens, text_a, text_b, names: tuple[str, str], grid: tuple[int, int],
                             patch_size: tuple[int, int]) -> HeadMaps:
    """Analysis 3: Σ over the picked heads of (S_a − S_b). tokens: (Hs, N, d) per-token contributions
    of the Hs picked heads; text_a, text_b: (d,) unit embeddings. One map, named "a − b"."""
    tokens = torch.as_tensor(tokens, dtype=torch.float32)
    if tokens.dim() != 3 or tokens.shape[0] == 0:
        raise CliplabError(f"tokens must be (Hs ≥ 1, N, d); got {tuple(tokens.shape)}")
    diff = torch.as_tensor(text_a, dtype=torch.float32) - torch.as_tensor(text_b, dtype=torch.float32)
    # Σ_h A_h · (a − b) = (Σ_h A_h) · (a − b): sum the heads first.
    patch = patch_scores(tokens.sum(0), diff[None], grid)
    return _result(patch, patch_size, [f"{names[0]} − {names[1]}"])


def _result(patch: torch.Tensor, patch_size: tuple[int, int], names: list[str]) -> HeadMaps:
    maps = upsample(patch, patch_size).numpy()
    patch_np = patch.numpy()
    gw = patch_np.shape[2]
    peak = patch_np.reshape(len(names), -1).argmax(1)
    frame = pl.DataFrame({
        "text": names,
        "min": maps.min((1, 2)), "max": maps.max((1, 2)), "mean": maps.mean((1, 2)),
        "mean_abs": np.abs(maps).mean((1, 2)),
        "peak_patch_row": (peak // gw).astype(np.int64), "peak_patch_col": (peak % gw).astype(np.int64),
    })
    return HeadMaps(maps=maps, patch=patch_np, frame=frame)


def energy_ratio(maps: np.ndarray, mask: np.ndarray) -> float:
    """mean |S| over pixels inside ``mask`` / mean |S| outside. maps: (T, H, W) or (H, W); mask: (H, W) bool.

    ↑ (> 1: the map's energy is on the masked object). NaN when the mask is empty or full.
    """
    maps = np.abs(np.asarray(maps, dtype=np.float64))
    mask = np.asarray(mask, dtype=bool)
    if maps.shape[-2:] != mask.shape:
        raise CliplabError(f"maps {maps.shape[-2:]} and mask {mask.shape} differ in size")
    if mask.all() or not mask.any():
        return float("nan")
    inside, outside = maps[..., mask].mean(), maps[..., ~mask].mean()
    return float(inside / outside) if outside > 0 else float("inf")


def topic_maps(tokens, texts, grid: tuple[int, int], patch_size: tuple[int, int],
               subtract_mean: bool = True) -> np.ndarray:
    """``topic_segmentation``'s maps for B images at once: tokens (B, N, d), texts (T, d) → (B, T, H, W)."""
    tokens = torch.as_tensor(tokens, dtype=torch.float32)
    texts = torch.as_tensor(texts, dtype=torch.float32)
    gh, gw = grid
    if tokens.dim() != 3 or tokens.shape[1] != gh * gw + 1:
        raise CliplabError(f"tokens must be (B, {gh * gw + 1}, d); got {tuple(tokens.shape)}")
    patch = (tokens[:, 1:] @ texts.T).permute(0, 2, 1).reshape(len(tokens), len(texts), gh, gw)  # (B, T, gh, gw)
    if subtract_mean and len(texts) > 1:
        patch = patch - patch.mean(1, keepdim=True)
    return F.interpolate(patch, scale_factor=tuple(patch_size), mode="bilinear", align_corners=False).numpy()


def energy_ratios(tokens, texts, masks: np.ndarray, grid: tuple[int, int], patch_size: tuple[int, int],
                  subtract_mean: bool = True) -> np.ndarray:
    """Per image the ``energy_ratio`` of one head's topic maps: (B,).

    tokens: (B, N, d) the head's per-token contributions for B images; texts: (T, d) the texts shown
    (e.g. the head's top TextSpan texts); masks: (B, H, W) bool object masks at the model's input
    resolution. Maps as ``topic_segmentation`` (mean over texts subtracted when T > 1).
    """
    if len(masks) != len(tokens):
        raise CliplabError(f"{len(tokens)} images of tokens but {len(masks)} masks")
    maps = topic_maps(tokens, texts, grid, patch_size, subtract_mean)
    return np.array([energy_ratio(m, k) for m, k in zip(maps, masks)])


def region_means(maps: np.ndarray, regions: np.ndarray, n_regions: int) -> np.ndarray:
    """Mean of each map over each labelled region: maps (B, T, H, W), regions (B, H, W) int in
    0..n_regions−1 → (B, n_regions, T); NaN for a region absent from an image."""
    maps, regions = np.asarray(maps, np.float64), np.asarray(regions)
    if maps.shape[0] != regions.shape[0] or maps.shape[2:] != regions.shape[1:]:
        raise CliplabError(f"maps {maps.shape} and regions {regions.shape} do not match")
    b, t = maps.shape[:2]
    one_hot = (regions.reshape(b, -1, 1) == np.arange(n_regions)).astype(np.float64)  # (B, P, R)
    sums = np.einsum("bpr,btp->brt", one_hot, maps.reshape(b, t, -1))
    counts = one_hot.sum(1)[..., None]  # (B, R, 1)
    return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def overlay(image: np.ndarray, heat: np.ndarray, bound: float, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8: ``heat`` (H, W) coloured on a diverging scale clipped to [−bound, bound]
    (blue < 0 < red, white at 0), alpha-blended over ``image`` (H, W, 3) uint8, all in float.

    Values beyond ±bound saturate at full blue/red; nothing wraps around (the tool's
    ``uint8(map * 255)`` turns values above 1 into small ones and inverts the colours).
    """
    import matplotlib

    heat = np.asarray(heat, dtype=np.float64)
    if image.shape[:2] != heat.shape:
        raise CliplabError(f"image {image.shape[:2]} and map {heat.shape} differ in size")
    scaled = np.clip(heat / (bound if bound > 0 else 1.0), -1.0, 1.0) * 0.5 + 0.5  # [−b, b] → [0, 1]
    rgb = matplotlib.colormaps["bwr"](scaled)[..., :3]
    out = (1 - alpha) * image.astype(np.float64) / 255 + alpha * rgb
    return (np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8)


def heat_overlay(image: np.ndarray, maps: np.ndarray, titles: list[str], suptitle: str = "") -> bytes:
    """The image (H, W, 3) uint8 beside each map (T, H, W) blended over it (``overlay``), one symmetric
    scale for all maps (±max |S|), with a colour bar."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from cliplab.plots import _png

    maps = np.asarray(maps, dtype=np.float32)
    bound = float(np.abs(maps).max()) or 1.0
    n = len(maps) + 1
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n + 0.6, 2.8), squeeze=False)
    axes[0, 0].imshow(image, interpolation="nearest")
    axes[0, 0].set_title("input", fontsize=8)
    for ax, m, title in zip(axes[0, 1:], maps, titles):
        ax.imshow(overlay(image, m, bound), interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(title, 26)[:3]), fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.colorbar(ScalarMappable(Normalize(-bound, bound), "bwr"), ax=list(axes.flat), shrink=0.8, pad=0.02)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return _png(fig)
