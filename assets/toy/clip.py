"""The toy CLIP of a `toy-vit.s<seed>` checkpoint partition: trained contrastively on toyworld's train split."""

from __future__ import annotations

import time
from dataclasses import replace

import polars as pl

from assets._report import png_metadata
from cliplab import plots
from cliplab.toy import toyworld as tw
from cliplab.toy.clip import images_to_tensor, toy_tokenizer, train_toy_clip
from cliplab.zeroshot import class_embeddings, top_k
from resources.datasets import DatasetCatalog, decode_images
from resources.models import ModelZoo, as_weights, save_checkpoint
from resources.registry import TOY_ARCH, ModelSpec, toy_config
from resources.store import ArtifactStore


def train_toy_checkpoint(context, spec: ModelSpec, steps: int | None, zoo: ModelZoo, datasets: DatasetCatalog,
                         store: ArtifactStore) -> dict:
    """Train the toy CLIP of `spec` on toyworld's train captions, save it, and describe it (val zero-shot top-1, loss)."""
    import torch

    cfg = toy_config(spec)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    train = pl.read_parquet(datasets.toyworld_path("train"), columns=["image_png", "caption"])
    images = decode_images(train["image_png"])

    def log(step, loss, rate):
        if step % 50 == 0 or step == cfg.steps - 1:
            context.log.info(f"toy CLIP {spec.key} step {step + 1}/{cfg.steps}: loss {loss:.3f}, {rate:.0f} images/s")

    t0 = time.perf_counter()
    model, losses = train_toy_clip(images, train["caption"].to_list(), cfg, on_step=log)
    seconds = time.perf_counter() - t0
    val = pl.read_parquet(datasets.toyworld_path("val"), columns=["image_png", "label"])
    with torch.inference_mode():
        weights = class_embeddings(model.encode_text, toy_tokenizer(), tw.class_names(), list(tw.TEMPLATES))
        val_images = decode_images(val["image_png"])
        emb = torch.cat([model.encode_image(images_to_tensor(val_images[i:i + 256])) for i in range(0, len(val_images), 256)])
        pred, _, _ = top_k(torch.nn.functional.normalize(emb, dim=-1), weights, k=1)
    accuracy = float((pred[:, 0].numpy() == val["label"].to_numpy()).mean())
    folder = save_checkpoint(as_weights(model, TOY_ARCH), zoo.checkpoint_dir(spec.key), extra={
        "kind": "toy", "train": cfg.__dict__, "val_top1": accuracy, "final_loss": losses[-1], "dataset": "toyworld",
        "train_seconds": round(seconds, 1)})
    context.log.info(f"toy CLIP {spec.key}: val zero-shot top-1 {accuracy:.3f}; checkpoint {folder}")
    return {
        "val zero-shot top-1": accuracy,
        "final loss": losses[-1],
        "steps": cfg.steps,
        "training seconds": round(seconds, 1),
        **png_metadata(plots.loss_curve(losses, f"toy CLIP {spec.key}"), store.figure_path(f"{spec.key}-loss.png"), "loss curve"),
    }
