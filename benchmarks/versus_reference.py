"""cliplab's pure maths against a re-statement of what the reference code computes, side by side. Prints a table; not a test.

    python benchmarks/versus_reference.py            # paper-sized inputs (a few minutes on one core)
    python benchmarks/versus_reference.py --quick    # smaller TextSpan and chain, fewer repeats (1–2 minutes)

Each step runs cliplab's function and a re-statement of the reference computation (from the method pages
../shared/methods/mutual-knowledge.md and head-spans.md; never the reference's own code) on identical
synthetic inputs of the paper's shapes, in this one process, on one thread (torch.set_num_threads(1),
threadpoolctl and OMP/MKL/OpenBLAS limited to 1), as the median of several repeats. The last columns
show that the results are the same: the largest absolute difference of the compared quantity, and what
that quantity is.

1. Sinkhorn descriptor selection, 64 images: candidates (intersection of the per-concept top-500 sets, the
   image filter mean − 0.02), Sinkhorn on exp(2.5·S) with 1000 row/column normalisations, top-3 per concept.
   Reference: image by image, `reference_sinkhorn` (the normalisations themselves). cliplab:
   `select_descriptors_batch` (all images at once, plain scaling iteration); also its log-domain path.
2. MI curves + AUC, 400 images: D_v (15) against D_ŷ (u = 50), removal one at a time (sentinel), the
   reference's contingency table T_ij, H(T) with ln(T + 1e−9), AUC = mean. cliplab: `mi_curve`, `auc`.
3. PCA concepts: 4,000 foreground patches × 768 (50 images of a ViT-B), PCA(5) [scikit-learn defaults],
   min-max scaling, argmax. cliplab: `pca_concepts`.
4. k-means concepts: the same patches, L2-normalised, k-means(5), ≤ 500 iterations (seeded like cliplab:
   the reference is unseeded). cliplab: `kmeans_concepts` (scikit-learn's seeded Lloyd with Elkan's bounds).
5. TextSpan, 12 heads (one layer) of rank head_dim + 4 = 68 (d = 512, 3,498 texts): SVD of C, V_r, texts
   projected, then k greedy steps that form the (n × M) score matrix. The reference's r is the heads' true
   rank here (its r = 80 would add rounding-noise directions, which change picks). cliplab:
   `text_span_heads(r="numerical")`, batched and as a loop of single heads.

6. The mutual-knowledge chain per image, one class batch of 50 toyworld images (16 with --quick) through a
   random-init toy CLIP (patch tokens and image embeddings computed once beforehand, as patch_features stores
   them): the reference's sequence of steps (joint SVD; image by image the clean-up; both concept branches;
   image by image and concept by concept the ellipse, the three prompts and one encoder call per prompt, plus
   one for the unprompted image; image by image candidates, Sinkhorn, top-3, D_v and the MI curve) against
   cliplab's batched asset computation (`cliplab_chain`). One-concept images are not compared (the reference's
   plan is flat there and picks the first candidates; cliplab ranks by S, see `select_descriptors`).

7. Head decomposition, random-init ViT-B/16 at 224 px (N = 197 tokens), batch 2 (1 with --quick), the last 4
   layers' 48 heads,
   token-summed: the reference materialises every (query, source, head) cell of a layer, [B, N, N, H, width],
   through out_proj (b_O / (N·H) per cell), keeps the CLS query and sums the sources; cliplab's
   `decompose_image` computes the CLS query row only. Both linearise ln_post the same way (compared: the parts
   and Σ parts = e/‖e‖).

Synthetic data: timing does not depend on the values, and equality is checked on them. The machine may
be shared: numbers are noisy; the ratio is what matters.
"""

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SENTINEL = object()


def timed(fn, repeats: int):
    """(median seconds, last result) of `repeats` calls of fn()."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


# ---------------------------------------------------------------- 1. Sinkhorn descriptor selection

def sinkhorn_inputs(B=64, L=5, D=4229, seed=0):
    """S (B, L, D) concept–descriptor cosines sharing an image component, image_sim (B, D), concept mask."""
    g = torch.Generator().manual_seed(seed)
    shared = torch.randn(B, 1, D, generator=g, dtype=torch.float64)
    S = 0.2 + 0.05 * shared + 0.02 * torch.randn(B, L, D, generator=g, dtype=torch.float64)
    image_sim = 0.2 + 0.05 * shared[:, 0] + 0.01 * torch.randn(B, D, generator=g, dtype=torch.float64)
    present = torch.ones(B, L, dtype=torch.bool)
    present[::3, 4] = False  # some images have 4 concepts
    present[1::5, 3:] = False  # some 3
    return S, image_sim, present


def reference_selection(S, image_sim, present, top=500, offset=0.02, k=3):
    """Image by image: top-500 sets intersected, the image filter, the reference's normalisations, top-3."""
    from cliplab.mutual.transport import reference_sinkhorn

    picks, plans = [], []
    for b in range(S.shape[0]):
        s = S[b][present[b]].numpy()
        tops = [set(np.argsort(-row, kind="stable")[:top].tolist()) for row in s]
        both = np.array(sorted(set.intersection(*tops)), dtype=np.int64)
        sim = image_sim[b].numpy()[both]
        keep = both[sim > sim.mean() - offset]
        plan = reference_sinkhorn(torch.from_numpy(s[:, keep]))
        best = plan.topk(min(k, len(keep)), dim=1).indices.numpy()
        picks.append(keep[best])
        plans.append((keep, plan))
    return picks, plans


def bench_sinkhorn(repeats):
    from cliplab.mutual.transport import select_descriptors_batch, sinkhorn_assignment_batch

    S, image_sim, present = sinkhorn_inputs()
    t_ref, (ref_picks, ref_plans) = timed(lambda: reference_selection(S, image_sim, present), repeats)
    rows = []
    for method in ("auto", "log"):
        t_ours, out = timed(lambda: select_descriptors_batch(S, present, image_sim, method=method), repeats)
        differ = sum(int((out[b][present[b]].numpy() != ref_picks[b]).sum()) for b in range(S.shape[0]))
        # the plans themselves, each image's candidate block transported alone, in one batch
        n_max = max(len(keep) for keep, _ in ref_plans)
        S_c = torch.zeros(S.shape[0], S.shape[1], n_max, dtype=torch.float64)
        cols = torch.zeros(S.shape[0], n_max, dtype=torch.bool)
        for b, (keep, _) in enumerate(ref_plans):
            S_c[b, :, : len(keep)] = S[b][:, keep]
            cols[b, : len(keep)] = True
        plan = sinkhorn_assignment_batch(S_c, present, cols, method=method)
        delta = max(float((plan[b][present[b]][:, : len(keep)] - p).abs().max()) for b, (keep, p) in enumerate(ref_plans))
        name = "Sinkhorn descriptor selection, 64 images batched" + (" (log-domain path)" if method == "log" else "")
        rows.append((name, t_ref, t_ours, delta, f"plan Π; {differ} picks differ (n ≤ {n_max})"))
    return rows


# ---------------------------------------------------------------- 2. MI curves + AUC

def mi_inputs(images=400, bank=4229, u=50, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(images):
        D_y = rng.choice(bank, u, replace=False).tolist()
        n = int(rng.integers(3, 16))
        shared = rng.choice(D_y, int(rng.integers(0, min(n, 6) + 1)), replace=False).tolist()
        D_v = shared + rng.choice(bank, n - len(shared), replace=False).tolist()
        rng.shuffle(D_v)
        out.append((D_v, D_y))
    return out


def reference_mi(D_v, D_y):
    """The reference's value: ln N + ln M + H(T), T the normalised equality table, ln(T + 1e−9); 0 if no match."""
    T = np.array([[1.0 if x == y else 0.0 for y in D_y] for x in D_v])
    if T.sum() == 0:
        return 0.0
    T = T / T.sum()
    return float(np.log(len(D_v)) + np.log(len(D_y)) - (T * np.log(T + 1e-9)).sum())


def reference_curves(pairs):
    curves = []
    for D_v, D_y in pairs:
        remaining = list(D_v)
        curve = [reference_mi(remaining, D_y)]
        for i in range(len(remaining)):
            remaining[i] = SENTINEL
            curve.append(reference_mi(remaining, D_y))
        curves.append((np.array(curve), float(np.mean(curve))))
    return curves


def bench_mi(repeats):
    from cliplab.mutual.information import auc, mi_curve

    pairs = mi_inputs()
    t_ref, ref = timed(lambda: reference_curves(pairs), repeats)
    t_ours, ours = timed(lambda: [(c := mi_curve(D_v, D_y), auc(c)) for D_v, D_y in pairs], repeats)
    delta = max(max(float(np.abs(a - b).max()), abs(x - y)) for (a, x), (b, y) in zip(ref, ours))
    return [("MI curves + AUC, 400 images", t_ref, t_ours, delta, "curve points, AUC (ref's ln(T+1e-9): ≈ c·1e-9)")]


# ---------------------------------------------------------------- 3-4. concepts

def patch_features(P=4000, C=768, seed=2):
    """(P, C) float32 foreground patch tokens: a few strong part directions, an offset and noise."""
    rng = np.random.default_rng(seed)
    parts = rng.normal(size=(P, 24)) * np.logspace(1, -0.5, 24)
    x = parts @ rng.normal(size=(24, C)) + 0.5 * rng.normal(size=(P, C)) + rng.normal(size=C)
    return x.astype(np.float32)


def reference_pca(x, L=5):
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import MinMaxScaler

    scores = PCA(n_components=L, random_state=0).fit_transform(x)
    return MinMaxScaler().fit_transform(scores).argmax(axis=1)


def reference_kmeans(x, L=5):
    from sklearn.cluster import KMeans

    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return KMeans(n_clusters=L, max_iter=500, random_state=0).fit_predict(x)


def bench_concepts(repeats):
    from cliplab.mutual.concepts import kmeans_concepts, pca_concepts

    x = patch_features()
    rows = []
    for name, ref_fn, ours_fn in (("PCA concepts, 4000 patches × 768", reference_pca, pca_concepts),
                                  ("k-means concepts, 4000 patches × 768", reference_kmeans, kmeans_concepts)):
        t_ref, ref = timed(lambda: ref_fn(x), repeats)
        t_ours, ours = timed(lambda: ours_fn(x), repeats)
        differ = int((np.asarray(ref) != ours).sum())
        rows.append((name, t_ref, t_ours, float(differ), "concept ids differing (count)"))
    return rows


# ---------------------------------------------------------------- 5. TextSpan

def textspan_inputs(heads=12, n=2000, d=512, M=3498, rank=68, seed=3):
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(heads, n, rank - 1, generator=g) * torch.logspace(0.5, -1.5, rank - 1)
    C = latent @ torch.randn(heads, rank - 1, d, generator=g) + 3 * torch.randn(heads, 1, d, generator=g)
    T = F.normalize(torch.randn(M, d, generator=g), dim=-1)
    return C, T


def reference_text_span(C, T, k, r):
    """One head, the spec's steps literally (float32): SVD, T V_rᵀV_r, centre, k × (std of C·Tᵀ, deflate)."""
    vh = torch.linalg.svd(C, full_matrices=False)[2][:r]
    T = T @ vh.T @ vh
    mean = C.mean(0, keepdim=True)
    C = C - mean
    R = mean.repeat(C.shape[0], 1)
    picks, scores = [], []
    for _ in range(k):
        std = (C @ T.T).std(0)
        j = int(std.argmax())
        picks.append(j)
        scores.append(float(std[j]))
        t = T[j]
        coef = C @ t / (t @ t)
        R += torch.outer(coef, t)
        C -= torch.outer(coef, t)
        T = T - torch.outer(T @ t / (t @ t), t)
    return picks, scores, R


def bench_textspan(repeats, ref_repeats, n, k):
    from cliplab.heads.textspan import text_span_heads

    C, T = textspan_inputs(n=n)
    rank = 68
    t_ref, ref = timed(lambda: [reference_text_span(C[h], T, k, rank) for h in range(C.shape[0])], ref_repeats)
    t_batch, batch = timed(lambda: text_span_heads(C, T, k=k), repeats)
    t_loop, loop = timed(lambda: [text_span_heads(C[h: h + 1], T, k=k) for h in range(C.shape[0])], repeats)
    assert batch.ranks.tolist() == [rank] * C.shape[0], batch.ranks.tolist()
    differ = sum(int(a != b) for h in range(C.shape[0]) for a, b in zip(ref[h][0], batch.indices[h].tolist()))
    score_delta = max(abs(a - b) for h in range(C.shape[0]) for a, b in zip(ref[h][1], batch.scores[h].tolist()))
    recon_delta = max(float((ref[h][2] - batch.reconstruction[h]).abs().max()) for h in range(C.shape[0]))
    loop_differ = sum(int((lp.indices[0] != batch.indices[h]).sum()) for h, lp in enumerate(loop))
    what = f"12 heads, n = {n}, 3498 texts, k = {k}"
    return [
        (f"TextSpan {what}, batched", t_ref, t_batch, score_delta,
         f"scores; {differ} picks differ; recon max |Δ| {recon_delta:.1g}"),
        (f"TextSpan {what}, looped heads", t_ref, t_loop, 0.0 if loop_differ == 0 else float(loop_differ),
         f"picks differing from batched: {loop_differ}; batched/looped {t_batch / t_loop:.2f}"),
    ]


# ---------------------------------------------------------------- 6. the whole chain, per image

def chain_inputs(B=50, D=4229, u=50, seed=5):
    """A class batch of B toyworld images through a random-init toy CLIP (64 px, 8×8 patches): patch tokens,
    unit image embeddings (patch_features' two outputs, computed once, not timed), a unit descriptor bank and
    a D_ŷ of u descriptors per image."""
    from cliplab.features import patch_features as extract
    from cliplab.toy import toyworld
    from cliplab.toy.clip import MEAN, STD, build_toy_clip, images_to_tensor

    torch.manual_seed(seed)
    model = build_toy_clip().eval()
    images = images_to_tensor(toyworld.generate(0, "val", B).images)
    with torch.inference_mode():
        f = extract(model, images)
    bank = F.normalize(torch.randn(D, f.embedding.shape[1], generator=torch.Generator().manual_seed(seed)), dim=-1)
    rng = np.random.default_rng(seed)
    D_y = [rng.choice(D, u, replace=False).tolist() for _ in range(B)]
    mean, std = torch.tensor(MEAN)[None, :, None, None], torch.tensor(STD)[None, :, None, None]
    return model, images, (images * std + mean).clamp(0, 1), f.tokens.float(), f.embedding.float(), f.grid, bank, D_y, (mean, std)


def reference_chain(model, images, pixels, tokens, grid, bank, D_y, norm, L=5):
    """The reference's sequence of steps: joint SVD over the class batch, then image by image the clean-up;
    both concept branches on the pooled foreground; then image by image and concept by concept the ellipse,
    the three prompts and one encoder call per prompt; the unprompted image's own encoder call; image by
    image the candidates, Sinkhorn, top-3 (reference_selection), D_v and the MI curve (reference_curves)."""
    from scipy import ndimage
    from torchvision.transforms.functional import gaussian_blur

    from cliplab.mutual.information import importance_order
    from cliplab.mutual.visual_prompts import concept_regions, fit_ellipse, visual_prompts

    mean, std = norm
    B, N, _ = tokens.shape
    f_hat = F.normalize(tokens, dim=-1).reshape(B * N, -1)
    v = torch.linalg.svd(f_hat, full_matrices=False).U[:, 1]
    share = float((v > 0).float().mean())
    fg = ((-v if 0.5 < share < 1 else v) > 0).reshape(B, *grid).numpy()
    masks = []
    for b in range(B):  # largest 8-connected component, plus the second if ≥ 5 patches
        lab, n = ndimage.label(fg[b], structure=np.ones((3, 3)))
        sizes = np.bincount(lab.ravel())[1:]
        order = np.argsort(-sizes, kind="stable")
        keep = [order[0] + 1] if n else []
        if n > 1 and sizes[order[1]] >= 5:
            keep.append(order[1] + 1)
        masks.append(np.isin(lab, keep) & (lab > 0))
    masks = np.stack(masks).reshape(B, N)
    img, patch = np.nonzero(masks)
    x = tokens.numpy()[img, patch]
    out = {}
    for branch, ids in (("pca", reference_pca(x, L)), ("kmeans", reference_kmeans(x, L))):
        curves = []
        for b in range(B):
            g = np.full(N, -1)
            g[patch[img == b]] = ids[img == b]
            if not (g >= 0).any():
                continue
            regions = concept_regions(g[None], grid, L)[0]
            feats, present = [], []
            for c in range(L):
                if not regions[c].any():
                    continue
                region = F.interpolate(torch.from_numpy(regions[c])[None, None].float(), size=pixels.shape[-2:], mode="nearest")[0] > 0.5
                ellipse = fit_ellipse(region)
                blurred = gaussian_blur(pixels[b: b + 1], [11, 11], [2.0, 2.0])
                prompts = visual_prompts(pixels[b: b + 1], ellipse, blurred=blurred)[0]
                with torch.inference_mode():
                    embs = [F.normalize(model.encode_image((p[None] - mean) / std).float(), dim=-1)[0] for p in prompts]
                feats.append(torch.stack(embs).mean(0))
                present.append(c)
            with torch.inference_mode():
                image = F.normalize(model.encode_image(images[b: b + 1]).float(), dim=-1)[0]
            S = (torch.stack(feats) @ bank.T).double()
            image_sim = (image @ bank.T).double()
            picks, _ = reference_selection(S[None], image_sim[None], torch.ones(1, len(feats), dtype=torch.bool))
            selected = [list(p) for p in picks[0]]
            dv, _ = importance_order(selected, image_sim.numpy())
            curves.append((*reference_curves([(dv, D_y[b])])[0], len(feats)))
        out[branch] = curves
    return out


def cliplab_chain(model, pixels, tokens, embedding, grid, bank, D_y, norm, L=5):
    """cliplab's assets' computation for the same batch: prominent_patches, largest_components, both concept
    branches, every concept of both branches prompted in one batch with one prompt set per distinct
    (image, ellipse) and one encoder call, the image embeddings from patch_features, select_descriptors_batch
    for all images, importance_order and mi_curve."""
    from cliplab.mutual.cleanup import largest_components
    from cliplab.mutual.concept_descriptors import describe_concepts
    from cliplab.mutual.concepts import kmeans_concepts, pca_concepts
    from cliplab.mutual.information import auc, importance_order, mi_curve
    from cliplab.mutual.spectral import prominent_patches

    mean, std = norm
    B, N, _ = tokens.shape
    masks = largest_components(prominent_patches(tokens).reshape(B, *grid).numpy()).reshape(B, N)
    img, patch = np.nonzero(masks)
    x = tokens.numpy()[img, patch]
    grids = []
    for ids in (pca_concepts(x, L), kmeans_concepts(x, L)):
        g = np.full((B, N), -1)
        g[img, patch] = ids
        grids.append(g)
    images = (pixels - mean) / std
    cd = describe_concepts(lambda p: model.encode_image(p).float(), images, mean, std, grids, grid, L, bank, embedding, {},
                           ablation=False)
    present = cd.n_patches > 0
    out = {}
    for j, branch in enumerate(("pca", "kmeans")):
        picks = cd.picks[(j, True)]
        curves = []
        for b in range(B):
            if not present[b, j * L:(j + 1) * L].any():
                continue
            selected = [[d for d in picks[b, c] if d >= 0] for c in range(L) if present[b, j * L + c]]
            dv, _ = importance_order(selected, cd.image_sim[b])
            curve = mi_curve(dv, D_y[b])
            curves.append((curve, auc(curve)))
        out[branch] = curves
    return out, cd.prompts_encoded / B, 3 * len(cd.slot) / B + 1


def bench_chain(repeats, B):
    model, images, pixels, tokens, embedding, grid, bank, D_y, norm = chain_inputs(B=B)
    t_ref, ref = timed(lambda: reference_chain(model, images, pixels, tokens, grid, bank, D_y, norm), max(1, repeats // 2))
    t_ours, (ours, passes, ref_passes) = timed(lambda: cliplab_chain(model, pixels, tokens, embedding, grid, bank, D_y, norm), repeats)
    delta, differ, single = 0.0, 0, 0
    for branch in ("pca", "kmeans"):
        assert len(ref[branch]) == len(ours[branch]), (branch, len(ref[branch]), len(ours[branch]))
        for (a, x, n_concepts), (b, y) in zip(ref[branch], ours[branch]):
            if n_concepts == 1:  # the reference's plan is flat (its picks: the first candidates); cliplab ranks by S
                single += 1
                continue
            differ += int(len(a) != len(b) or not np.allclose(a, b, atol=1e-6))
            if len(a) == len(b):
                delta = max(delta, float(np.abs(a - b).max()), abs(x - y))
    return [(f"mutual-knowledge chain, {B} images (toy CLIP, per image)", t_ref, t_ours, delta,
             f"MI curves, AUC; {differ} curves differ ({single} one-concept curves not compared: flat plan); "
             f"encoder passes/image {ref_passes:.1f} → {passes:.1f}")]


# ---------------------------------------------------------------- 7. head decomposition
def reference_decomposition(model, images, last=4):
    """Every (query n, source m, head h) cell of each of the `last` layers through out_proj, [B, N, N, H, width],
    then the CLS query and Σ_m; the rest of the stream as cliplab keeps it (parts: ln_pre, MLPs, other layers).
    Returns (heads (B, last, H, d), embedding (B, d), total of every part (B, d))."""
    visual = model.visual
    blocks = visual.transformer.resblocks
    L = len(blocks)
    share = 1.0 / (2 * L + 1)
    with torch.inference_mode():
        x = visual._embeds(images)
        parts, cells = [x[:, 0]], []
        for index, block in enumerate(blocks):
            h = block.ln_1(x)
            attn = block.attn
            B, N, width = h.shape
            H = attn.num_heads
            e = width // H
            qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(B, N, 3, H, e)
            q, k, v = qkv.unbind(2)
            probs = torch.softmax(torch.einsum("bnhe,bmhe->bhnm", q, k) * e ** -0.5, -1)
            out = attn.out_proj(torch.einsum("bhnm,bmhe->bnhe", probs, v).reshape(B, N, width))
            if index >= L - last:
                every = torch.einsum("bhnm,bmhe->bnmhe", probs, v)  # every query's every source cell, per head
                w_o = attn.out_proj.weight.view(width, H, e)
                full = torch.einsum("bnmhe,whe->bnmhw", every, w_o) + attn.out_proj.bias / (N * H)
                cells.append(full[:, 0].sum(1))  # CLS query, Σ over sources: (B, H, width)
            else:
                parts.append(out[:, 0])
            x = x + out
            mlp = block.mlp(block.ln_2(x))
            parts.append(mlp[:, 0])
            x = x + mlp
        r = x[:, 0]
        emb = visual.ln_post(r) @ visual.proj
        norm = emb.norm(dim=-1)
        mu, sigma = r.mean(-1), torch.sqrt(r.var(-1, unbiased=False) + visual.ln_post.eps)
        gamma, beta = visual.ln_post.weight, visual.ln_post.bias

        def linear(c, s):
            view = (-1,) + (1,) * (c.dim() - 1)
            return ((gamma * (c - s * mu.view(view)) / sigma.view(view)) + s * beta) @ visual.proj / norm.view(view)

        heads = linear(torch.stack(cells, 1), share / blocks[0].attn.num_heads)
        total = sum(linear(p, share) for p in parts) + heads.sum((1, 2))
        return heads, emb / norm[:, None], total


def bench_decomposition(repeats, batch=2, arch="ViT-B-16"):
    import open_clip

    from cliplab.heads.decomposition import decompose_image

    torch.manual_seed(7)
    model = open_clip.create_model(arch, pretrained=None).eval()
    images = torch.randn(batch, 3, 224, 224)
    t_ref, (ref_heads, ref_emb, ref_total) = timed(lambda: reference_decomposition(model, images), repeats)
    t_ours, ours = timed(lambda: decompose_image(model, images), repeats)
    delta = float((ref_heads - ours.heads).abs().max())
    sums = max(float((ref_total - ref_emb).abs().max()), float((ours.total() - ours.embedding).abs().max()))
    return [(f"head decomposition, {arch} 224 px, {batch} images, 48 heads", t_ref, t_ours, delta,
             f"head parts; max |Σ parts − e| {sums:.1g} (both)")]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller TextSpan and chain, fewer repeats (1–2 minutes)")
    p.add_argument("--repeats", type=int, default=0, help="repeats per measurement (default 5, --quick 3)")
    args = p.parse_args()
    repeats = args.repeats or (3 if args.quick else 5)
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(1)
    except ImportError:  # pragma: no cover
        limits = None
    t0 = time.perf_counter()
    rows = []
    rows += bench_sinkhorn(repeats)
    rows += bench_mi(repeats)
    rows += bench_concepts(repeats)
    rows += bench_decomposition(repeats, batch=1 if args.quick else 2)
    if args.quick:
        rows += bench_textspan(repeats, 1, n=1000, k=5)
        rows += bench_chain(repeats, B=16)
    else:
        rows += bench_textspan(repeats, 2, n=2000, k=20)
        rows += bench_chain(repeats, B=50)
    print(f"\ncliplab vs reference re-statement, {'quick' if args.quick else 'full'}, 1 thread "
          f"(torch {torch.get_num_threads()}, BLAS {'limited' if limits else 'unlimited'}), "
          f"median of {repeats} repeats (reference TextSpan {1 if args.quick else 2}), {time.perf_counter() - t0:.0f} s in all\n")
    w = max(len(r[0]) for r in rows)
    print(f"| {'step':{w}} | {'ref s':>8} | {'cliplab s':>9} | {'ratio':>7} | {'max |Δ|':>8} | Δ of")
    print(f"|{'-' * (w + 2)}|{'-' * 10}|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 40}")
    for name, ref, ours, delta, what in rows:
        print(f"| {name:{w}} | {ref:8.4f} | {ours:9.4f} | {ref / ours:6.1f}× | {delta:8.1g} | {what}")


if __name__ == "__main__":
    main()
