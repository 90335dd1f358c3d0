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


def loss_curve(losses: list[float], title: str) -> bytes:
    """Training loss per step, with a 20-step running mean."""
    fig, ax = _figure(5, 3)
    x = np.arange(len(losses))
    ax.plot(x, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 20:
        smooth = np.convolve(losses, np.ones(20) / 20, mode="valid")
        ax.plot(x[19:], smooth, lw=1.5, label="20-step mean")
    ax.set(xlabel="step", ylabel="contrastive loss", title=title)
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
