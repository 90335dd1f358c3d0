"""Mutual knowledge of one image, computed on the fly with the functions the assets use.

`image_concepts` is steps 3–5 (prominent patches, PCA and k-means concepts) for an image that no asset has seen:
the spectral foreground of its own patch tokens, then the concepts of its own foreground patches (a stored image's
concepts are clustered over all the images of its class; an uploaded image has no class to pool with).
`describe_concepts` is steps 6–8 (visual prompts, Sinkhorn descriptor selection) for one image and its concept
grids: `cliplab.mutual.concept_descriptors.describe_concepts`, as the asset calls it, with a batch of one; on a stored
image with its stored grids it gives the stored rows (tests/e2e/test_explorer.py checks it).
`mi_of` is step 9–10 (D_v in importance order, MI curve against D_ŷ, AUC).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from cliplab.mutual.information import auc, importance_order, mi_curve

BRANCHES = ("pca", "kmeans")
DV_SCHEMA = {"branch": pl.String, "concept": pl.Int64, "n_patches": pl.Int64, "ellipse": pl.List(pl.Float32),
             "descriptor_index": pl.List(pl.Int64), "descriptor": pl.List(pl.String), "similarity": pl.List(pl.Float32),
             "importance": pl.List(pl.Float32)}


def image_concepts(m, pixels, L: int, seed: int, method: str = "joint", facet: str = "tokens",
                   min_second: int = 5) -> tuple[dict[str, np.ndarray], tuple[int, int]]:
    """branch → (N,) concept id per patch (−1 off the foreground) of one preprocessed image (1, 3, H, W)."""
    import torch

    from cliplab.features import patch_features
    from cliplab.mutual.cleanup import largest_components
    from cliplab.mutual.concepts import kmeans_concepts, pca_concepts
    from cliplab.mutual.spectral import prominent_patches

    with torch.inference_mode():
        f = patch_features(m.model, pixels.to(m.device, torch.float32))
    grid = tuple(int(g) for g in f.grid)
    x = (f.keys if facet == "keys" else f.tokens).float().cpu()  # (1, N, C)
    mask = prominent_patches(x, method=method).numpy()
    mask = largest_components(mask.reshape(-1, *grid), min_second).reshape(1, -1)[0]
    patches = np.nonzero(mask)[0]
    grids = {}
    for branch, fn in (("pca", pca_concepts), ("kmeans", kmeans_concepts)):
        g = np.full(grid[0] * grid[1], -1, dtype=np.int64)
        if len(patches):
            g[patches] = fn(x[0, patches].numpy(), L, seed)
        grids[branch] = g
    return grids, grid


def describe_concepts(m, pixels, grids: dict[str, np.ndarray], grid: tuple[int, int], L: int, bank: pl.DataFrame,
                      k: int = 3, top: int = 500, offset: float = 0.02, threshold: str = "mean",
                      temperature: float = 2.5, n_iter: int = 1000, blur_kernel: int = 11,
                      blur_sigma: float = 2.0, image_embedding: np.ndarray | None = None) -> pl.DataFrame:
    """D_v rows of one image (branch, concept, n_patches, ellipse, descriptor_index, descriptor, similarity,
    importance), as `visual_concept_descriptors` stores them; `bank` from `read_descriptor_bank`.
    image_embedding: the image's unit embedding (d,) when one is stored (patch_features), else it is encoded."""
    import torch
    import torch.nn.functional as F

    from cliplab.mutual.concept_descriptors import describe_concepts as describe

    images = pixels.to(m.device, torch.float32)
    D_text = torch.from_numpy(bank["vector"].to_numpy().astype(np.float32)).to(m.device)
    names = bank["descriptor"].to_numpy()
    mean = torch.tensor(m.mean, device=m.device)[None, :, None, None]
    std = torch.tensor(m.std, device=m.device)[None, :, None, None]
    encode = lambda x: m.model.encode_image(x).float()
    with torch.inference_mode():
        image_emb = (F.normalize(encode(images), dim=-1) if image_embedding is None
                     else torch.tensor(np.asarray(image_embedding, np.float32), device=m.device)[None])
    sel = {"k": k, "top": top, "offset": offset, "threshold": threshold, "temperature": temperature, "n_iter": n_iter}
    cd = describe(encode, images, mean, std, [grids[b][None] for b in BRANCHES], grid, L, D_text, image_emb, sel,
                  blur_kernel, blur_sigma, ablation=False)
    pair = {int(s): q for q, s in enumerate(cd.slot.tolist())}
    rows = []
    for j, branch in enumerate(BRANCHES):
        for c in range(L):
            q = pair.get(j * L + c)
            if q is None:
                continue
            d = [int(x) for x in cd.picks[(j, True)][0, c] if x >= 0]
            rows.append({"branch": branch, "concept": c, "n_patches": int(cd.n_patches[0, j * L + c]),
                         "ellipse": cd.ellipses[q].astype(np.float32).tolist(), "descriptor_index": d,
                         "descriptor": names[d].tolist(),
                         "similarity": cd.S[0, j * L + c, d].astype(np.float32).tolist(),
                         "importance": cd.image_sim[0, d].astype(np.float32).tolist()})
    return pl.DataFrame(rows, schema=DV_SCHEMA)


def mi_of(rows: pl.DataFrame, D_y: list[int], convention: str = "reference", method: str = "mean",
          max_descriptors: int = 15) -> dict[str, dict]:
    """branch → {dv, curve, mi, auc, matches} of one image's D_v rows against D_ŷ (as `mi_curves`)."""
    out = {}
    for branch in BRANCHES:
        g = rows.filter(pl.col("branch") == branch).sort("concept")
        if g.is_empty():
            continue
        selected = g["descriptor_index"].to_list()
        sim = {d: s for ds, ss in zip(selected, g["importance"].to_list()) for d, s in zip(ds, ss)}
        dense = np.zeros(max(sim, default=-1) + 1)
        dense[list(sim)] = list(sim.values())
        dv, _ = importance_order(selected, dense, max_descriptors)
        curve = mi_curve(dv, D_y, convention)
        out[branch] = {"dv": dv, "curve": np.asarray(curve, dtype=np.float64), "mi": float(curve[0]),
                       "auc": auc(curve, method), "matches": len(set(dv) & set(D_y))}
    return out
