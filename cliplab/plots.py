"""Small matplotlib figures rendered to PNG bytes (the Agg backend: no display needed)."""

from __future__ import annotations

import io

import numpy as np


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _figure(w: float, h: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(w, h))


def loss_curve(losses: list[float], title: str, ylabel: str = "contrastive loss") -> bytes:
    """Training loss per step, with a 20-step running mean."""
    fig, ax = _figure(5, 3)
    x = np.arange(len(losses))
    ax.plot(x, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 20:
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        ax.plot(x[19:], smooth, lw=1.5, label="20-step mean")
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.legend()
    return _png(fig)


def per_class_accuracy(names: list[str], accuracy: np.ndarray, title: str) -> bytes:
    """Horizontal bars of top-1 accuracy per class (at most 40 classes shown: the worst ones)."""
    order = np.argsort(accuracy)[:40]
    fig, ax = _figure(5, 0.22 * len(order) + 1)
    ax.barh([names[i] for i in order], accuracy[order])
    ax.set(xlim=(0, 1), xlabel="top-1 accuracy", title=title)
    return _png(fig)


def token_pca_overlay(images: np.ndarray, tokens: np.ndarray, grid: tuple[int, int], title: str) -> bytes:
    """Images (n, H, W, 3) uint8 beside the first 3 principal components of their patch tokens (n, N, C) as RGB."""
    n = len(images)
    flat = tokens.reshape(-1, tokens.shape[-1])
    flat = flat - flat.mean(0)
    _, _, vt = np.linalg.svd(flat, full_matrices=False)
    rgb = flat @ vt[:3].T
    rgb = (rgb - rgb.min(0)) / (np.ptp(rgb, 0) + 1e-8)
    rgb = rgb.reshape(n, grid[0], grid[1], 3)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(images[i])
        axes[1, i].imshow(rgb[i], interpolation="nearest")
        for ax in axes[:, i]:
            ax.axis("off")
    fig.suptitle(title)
    return _png(fig)


def image_grid(images: np.ndarray, captions: list[str] | None = None, cols: int = 4) -> bytes:
    """Images (n, H, W, 3) uint8 in a grid, each with its (wrapped) caption."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.7 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], interpolation="nearest")
            if captions:
                ax.set_title("\n".join(textwrap.wrap(captions[i], 28)[:3]), fontsize=6)
    return _png(fig)


CONCEPT_COLOURS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#999999")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def concept_overlays(images: list[np.ndarray], concepts: list, grids: list[np.ndarray], title: str = "") -> bytes:
    """Each image (H, W, 3) in [0, 1] with its concept patches coloured and their ellipses, beside it their descriptors.

    concepts: per image a frame with columns concept, ellipse [(cx, cy, a, b, θ)], descriptor [list];
    grids: per image (h, w) concept id per patch, −1 off the concepts.
    """
    from matplotlib.colors import to_rgb
    from matplotlib.patches import Ellipse

    plt = _plt()
    n = len(images)
    fig, axes = plt.subplots(n, 2, figsize=(6.5, 2.4 * n), squeeze=False, gridspec_kw={"width_ratios": [1, 1.7]})
    for (ax, text), image, rows, grid in zip(axes, images, concepts, grids):
        H, W = image.shape[:2]
        ids = np.kron(grid, np.ones((H // grid.shape[0], W // grid.shape[1]), dtype=grid.dtype))
        tint = np.array([to_rgb(CONCEPT_COLOURS[i % len(CONCEPT_COLOURS)]) for i in range(max(int(grid.max()) + 1, 1))])
        shown = image.copy()
        on = ids >= 0
        shown[on] = 0.5 * image[on] + 0.5 * tint[ids[on]]
        ax.imshow(shown, interpolation="nearest")
        ax.axis("off")
        text.axis("off")
        y = 0.95
        for concept, (cx, cy, a, b, theta), names in rows.select("concept", "ellipse", "descriptor").iter_rows():
            colour = CONCEPT_COLOURS[concept % len(CONCEPT_COLOURS)]
            ax.add_patch(Ellipse((cx, cy), 2 * a, 2 * b, angle=float(np.degrees(theta)), fill=False, lw=1.5, ec=colour))
            text.text(0.0, y, f"concept {concept}: " + "; ".join(names or ["(no descriptor)"]), color=colour,
                      fontsize=7, va="top", transform=text.transAxes, wrap=True)
            y -= 0.19
    if title:
        fig.suptitle(title)
    return _png(fig)


def mi_curves(per_class, title: str, max_classes: int = 12) -> bytes:
    """MI after each removal step, one line per class (both branches averaged), dataset mean in black.

    per_class: frame with class_index, branch, curve (list). At most max_classes classes are drawn.
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    rows = per_class.filter(per_class["branch"] == "mean")
    curves = [np.array(c) for c in rows["curve"].to_list()]
    for k, (label, c) in enumerate(zip(rows["class_index"].to_list(), curves)):
        if k < max_classes:
            ax.plot(np.arange(len(c)), c, lw=1, alpha=0.7, label=f"class {label}")
    if curves:
        longest = max(len(c) for c in curves)
        mean = np.mean([np.pad(c, (0, longest - len(c))) for c in curves], axis=0)
        ax.plot(np.arange(longest), mean, color="black", lw=2.5, label="mean")
    ax.set(xlabel="D_v descriptors removed (most important first)", ylabel="MI (nats)", title=title)
    ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def auc_vs_accuracy(summary, fits, published) -> bytes:
    """AUC (PCA branch) vs top-1 for every materialised partition, fitted lines, and the paper's points."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (ds, family), g in summary.group_by(["dataset", "family"], maintain_order=True):
        ax.scatter(g["auc_pca"], g["top1"], label=f"{ds} / {family}")
        for model, x, y in g.select("model", "auc_pca", "top1").iter_rows():
            ax.annotate(model, (x, y), fontsize=6)
    for row in fits.filter(fits["branch"] == "pca").iter_rows(named=True):
        x = summary.filter((summary["dataset"] == row["dataset"]) & (summary["family"] == row["family"]))["auc_pca"]
        xs = np.linspace(float(x.min()), float(x.max()), 10)
        ax.plot(xs, row["slope"] * xs + row["intercept"], lw=1)
    ax.scatter(published["auc_pca"], published["top1"], marker="o", facecolors="none", edgecolors="grey",
               label="paper (ImageNet val)")
    ax.set(xlabel="AUC of MI curve (PCA)", ylabel="zero-shot top-1", title="mutual knowledge vs accuracy")
    ax.legend(fontsize=6)
    return _png(fig)


def venn(vision: list[str], language: list[str], title: str) -> bytes:
    """Two circles: descriptors only in D_v, in both (mutual), only in D_ŷ, listed inside."""
    from matplotlib.patches import Circle

    plt = _plt()
    both = [d for d in vision if d in set(language)]
    only_v = [d for d in vision if d not in set(both)]
    only_l = [d for d in language if d not in set(both)]
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.add_patch(Circle((0.36, 0.5), 0.33, alpha=0.25, color="#377eb8"))
    ax.add_patch(Circle((0.64, 0.5), 0.33, alpha=0.25, color="#e41a1c"))
    for x, items, head in ((0.2, only_v, "vision only"), (0.5, both, "mutual"), (0.8, only_l, "language only")):
        ax.text(x, 0.9, f"{head} ({len(items)})", ha="center", fontsize=8, weight="bold")
        ax.text(x, 0.84, "\n".join(items[:15]), ha="center", va="top", fontsize=6)
    ax.set(xlim=(0, 1), ylim=(0.1, 0.95), title=title)
    ax.set_aspect("equal")
    ax.axis("off")
    return _png(fig)


def markdown_table(df) -> str:
    """A polars frame as a Markdown table (floats to 3 decimals) for Dagster's md metadata."""
    head = "| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns) + "\n"
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)
    return head + "".join("| " + " | ".join(fmt(v) for v in row) + " |\n" for row in df.iter_rows())


def deletion_insertion(curves: dict, title: str) -> bytes:
    """Mean predicted-class score after each deletion / insertion step, per (branch, order)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for (branch, order), (deletion, insertion) in curves.items():
        style = "-" if order == "importance" else "--"
        for ax, c in zip(axes, (deletion, insertion)):
            ax.plot(np.arange(len(c)), c, style, label=f"{branch}, {order} order")
    for ax, name in zip(axes, ("deletion (blur concepts away)", "insertion (restore concepts)")):
        ax.set(xlabel="concepts", ylabel="predicted-class score (cos × 2.5)", title=name)
        ax.legend(fontsize=6)
    fig.suptitle(title)
    return _png(fig)


def saliency_grid(images: np.ndarray, panels: dict, title: str = "") -> bytes:
    """Rows = images (n, H, W, 3) uint8; columns = the image, then one map (n, H, W) in [0, 1] per (model, method)
    key of `panels`, overlaid on a grey copy of the image."""
    plt = _plt()
    keys = list(panels)
    n = len(images)
    fig, axes = plt.subplots(n, 1 + len(keys), figsize=(1.6 * (1 + len(keys)), 1.7 * n + 0.4), squeeze=False)
    grey = images.mean(axis=-1)
    for i in range(n):
        axes[i, 0].imshow(images[i], interpolation="nearest")
        for j, key in enumerate(keys, start=1):
            axes[i, j].imshow(grey[i], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            axes[i, j].imshow(panels[key][i], cmap="jet", alpha=0.55, vmin=0, vmax=1, interpolation="bilinear")
            if i == 0:
                model, method = key
                axes[i, j].set_title(f"{model}\n{method}", fontsize=6)
        for ax in axes[i]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    return _png(fig)


def ssim_curves(curves: dict, title: str) -> bytes:
    """One line per method: SSIM mean (↑) against the noise level with its 95 % interval; curves[m] = (s, mean, low, high)."""
    fig, ax = _figure(5, 3)
    for method, (s, mean, low, high) in curves.items():
        ax.plot(s, mean, marker="o", ms=3, label=method)
        ax.fill_between(s, low, high, alpha=0.2)
    ax.set(xlabel="noise s.d. (1/255)", ylabel="SSIM(map(x), map(x + noise)) ↑", title=title, ylim=(None, 1.02))
    ax.legend(fontsize=7)
    return _png(fig)


def metric_curves(curves: dict, xlabel: str, ylabel: str, title: str, ylim: tuple | None = None) -> bytes:
    """One line with markers per key: curves[name] = (x, y), e.g. accuracy ↑ against ε or against the removed fraction."""
    fig, ax = _figure(5, 3)
    for name, (x, y) in curves.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=ylim)
    ax.legend(fontsize=7)
    return _png(fig)


def histograms(values: dict, xlabel: str, title: str, bins: int = 30) -> bytes:
    """Overlaid step histograms on shared bins, one per key: values[name] = 1-D array (e.g. best scores per neuron)."""
    fig, ax = _figure(5, 3)
    every = np.concatenate([np.asarray(v, dtype=float) for v in values.values()])
    edges = np.histogram_bin_edges(every, bins=bins)
    for name, v in values.items():
        ax.hist(np.asarray(v, dtype=float), bins=edges, histtype="step", lw=1.5, label=f"{name} (n = {len(v)})")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    ax.legend(fontsize=7)
    return _png(fig)


def metric_bars(summary, max_models: int = 8) -> bytes:
    """Small multiples: one panel per headline metric (the columns after model and dataset of `summary`), one bar per
    (model, dataset) row, each panel on its own axis (zoomed to the values) with the values written on the bars."""
    plt = _plt()
    metrics = [c for c in summary.columns if c not in ("model", "dataset")]
    rows = summary.head(max_models)
    labels = [f"{r['model']} × {r['dataset']}" for r in rows.iter_rows(named=True)]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.1 * cols, 2.4 * nrows + 0.5), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        values = np.array([np.nan if v is None else v for v in rows[m].to_list()], dtype=float)
        x = np.arange(len(values))
        ax.bar(x, np.nan_to_num(values), color=[colours[i % len(colours)] for i in x])
        finite = values[np.isfinite(values)]
        if finite.size:
            lo, hi = finite.min(), finite.max()
            pad = max(hi - lo, 0.02 * max(abs(hi), 1e-9))
            ax.set_ylim(lo - 1.5 * pad if lo - 1.5 * pad > 0 or lo < 0 else 0, hi + 0.6 * pad)
        for xi, v in zip(x, values):
            if np.isfinite(v):
                ax.text(xi, v, f"{v:.3f}", ha="center", va="bottom", fontsize=6)
        ax.set_xticks([])
        ax.set_title(m, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.legend([plt.Rectangle((0, 0), 1, 1, color=colours[i % len(colours)]) for i in range(len(labels))], labels,
               loc="lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)
    fig.suptitle("evaluation: models side by side (↑ better; each axis zoomed to its values)", fontsize=9)
    fig.tight_layout(rect=(0, 0.04 + 0.03 * ((len(labels) - 1) // 3 + 1), 1, 0.97))
    return _png(fig)
