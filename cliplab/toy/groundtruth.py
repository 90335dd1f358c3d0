"""Ground truth on the patch grid, from per-pixel part maps (toyworld), and the scores that use it."""

import numpy as np


def _patches(part_maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(B, H, W) → (B, N, P) pixels of each patch, N = h·w patches of P pixels, row-major like ViT tokens."""
    B, H, W = part_maps.shape
    h, w = grid
    if H % h or W % w:
        raise ValueError(f"part maps {H}x{W} do not tile into a {h}x{w} patch grid")
    ph, pw = H // h, W // w
    return part_maps.reshape(B, h, ph, w, pw).transpose(0, 1, 3, 2, 4).reshape(B, h * w, ph * pw)


def object_patches(part_maps: np.ndarray, grid: tuple[int, int], min_fraction: float = 0.5) -> np.ndarray:
    """(B, N) bool: patches whose pixels are at least `min_fraction` object (part id > 0)."""
    return (_patches(part_maps, grid) > 0).mean(axis=-1) >= min_fraction


def patch_parts(part_maps: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(B, N) int: the most frequent part id among each patch's object pixels (0 where it has none)."""
    px = _patches(part_maps, grid).astype(np.int64)
    n_parts = int(px.max()) + 1
    counts = (px[..., None] == np.arange(1, n_parts)).sum(axis=-2)  # (B, N, n_parts - 1)
    return np.where(counts.max(axis=-1) > 0, counts.argmax(axis=-1) + 1, 0)


def mask_iou(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """(B,) intersection over union of boolean masks (B, N); 1.0 where both are empty."""
    inter = (pred & true).sum(axis=-1)
    union = (pred | true).sum(axis=-1)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def cluster_purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """Σ_k max_j |cluster k ∩ label j| / n: how well clusters (n,) align with true labels (n,)."""
    clusters, labels = np.asarray(clusters), np.asarray(labels)
    if clusters.size == 0:
        return float("nan")
    table = np.zeros((clusters.max() + 1, labels.max() + 1), np.int64)
    np.add.at(table, (clusters, labels), 1)
    return float(table.max(axis=1).sum() / clusters.size)


def descriptor_grounding(dv: list[list[int]], class_names: list[str], present_parts: list[set[str]],
                         bank: list[str]) -> tuple[float, float]:
    """Fraction of D_v descriptors that name something present in their toyworld image, and chance.

    dv: per image its D_v (indices into `bank`, the toyworld descriptor bank); class_names and
    present_parts: per image its true class and the part names its part map shows. Returns
    (Σ grounded / Σ |D_v| over all images, the same for descriptors drawn uniformly from the bank:
    the mean over images of the grounded fraction of the whole bank). NaN when D_v is empty everywhere.
    """
    from cliplab.toy.toyworld import descriptor_grounded

    hits = total = 0
    chance = []
    for D_v, name, parts in zip(dv, class_names, present_parts):
        grounded = np.array([descriptor_grounded(d, name, parts) for d in bank])
        hits += int(grounded[D_v].sum()) if len(D_v) else 0
        total += len(D_v)
        chance.append(grounded.mean())
    return (hits / total if total else float("nan")), (float(np.mean(chance)) if chance else float("nan"))
