"""toyworld → toy_clip: the embedded default dataset and model (no GPU, no download)."""

import json
import time

import polars as pl
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from assets._report import png_metadata
from cliplab import plots
from cliplab.toy import toyworld as tw
from cliplab.toy.clip import TOY_CLIP_CONFIG, TrainConfig, images_to_tensor, train_toy_clip
from cliplab.zeroshot import class_embeddings, top_k
from resources.datasets import TOYWORLD_SCHEMA, DatasetCatalog, decode_images, toyworld_table
from resources.models import ModelZoo, save_checkpoint
from resources.registry import TOYWORLD_KEY, validate_key
from resources.store import ArtifactStore


class ToyworldConfig(Config):
    seed: int = 0
    n_train: int = 16000
    n_val: int = 1200
    image_size: int = 64


@asset(group_name="toy", kinds={"parquet"})
def toyworld(context: AssetExecutionContext, config: ToyworldConfig, store: ArtifactStore) -> MaterializeResult:
    """Procedural images of objects made of named parts, with captions, attributes and part masks (train + val)."""
    counts = {}
    for split, n in (("train", config.n_train), ("val", config.n_val)):
        with store.writer("toyworld", TOYWORLD_SCHEMA, split=split) as w:
            for start in range(0, n, 1000):
                batch = tw.generate(config.seed, split, min(1000, n - start), config.image_size, start=start)
                w.write_table(toyworld_table(batch, split))
        counts[split] = n
        context.log.info(f"toyworld {split}: {n} images")
    context.instance.add_dynamic_partitions("dataset", [TOYWORLD_KEY])
    sample = tw.generate(config.seed, "val", 8, config.image_size)
    return MaterializeResult(metadata={
        "dagster/row_count": sum(counts.values()),
        "train images": counts["train"], "val images": counts["val"],
        "classes": MetadataValue.json({s.name: list(s.parts) for s in tw.CLASSES}),
        "seed": config.seed,
        **png_metadata(plots.image_grid(sample.images, sample.captions), store.figure_path("toyworld.png"), "samples"),
    })


class ToyClipConfig(Config):
    seed: int = 0
    steps: int = TrainConfig.steps
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr


@asset(group_name="toy", deps=[toyworld], kinds={"pytorch", "safetensors"})
def toy_clip(context: AssetExecutionContext, config: ToyClipConfig, store: ArtifactStore,
             datasets: DatasetCatalog, zoo: ModelZoo) -> MaterializeResult:
    """A small open_clip CLIP trained contrastively on toyworld captions; registered as model `toy-vit.s<seed>`."""
    import torch

    key = validate_key(f"toy-vit.s{config.seed}", "model key")
    train = pl.read_parquet(datasets.toyworld_path("train"), columns=["image_png", "caption"])
    images = decode_images(train["image_png"])
    cfg = TrainConfig(steps=config.steps, batch_size=config.batch_size, lr=config.lr, seed=config.seed)

    def log(step, loss, rate):
        if step % 50 == 0 or step == cfg.steps - 1:
            context.log.info(f"toy_clip step {step + 1}/{cfg.steps}: loss {loss:.3f}, {rate:.0f} images/s")

    t0 = time.perf_counter()
    model, losses = train_toy_clip(images, train["caption"].to_list(), cfg, on_step=log)
    seconds = time.perf_counter() - t0
    val = pl.read_parquet(datasets.toyworld_path("val"), columns=["image_png", "label"])
    with torch.inference_mode():
        from cliplab.toy.clip import toy_tokenizer

        weights = class_embeddings(model.encode_text, toy_tokenizer(), tw.class_names(), list(tw.TEMPLATES))
        val_images = decode_images(val["image_png"])
        emb = torch.cat([model.encode_image(images_to_tensor(val_images[i:i + 256])) for i in range(0, len(val_images), 256)])
        pred, _, _ = top_k(torch.nn.functional.normalize(emb, dim=-1), weights, k=1)
    accuracy = float((pred[:, 0].numpy() == val["label"].to_numpy()).mean())
    folder = save_checkpoint(model, TOY_CLIP_CONFIG, zoo.checkpoint_dir(key), extra={
        "train": cfg.__dict__, "val_top1": accuracy, "final_loss": losses[-1], "dataset": "toyworld",
        "train_seconds": round(seconds, 1)})
    context.instance.add_dynamic_partitions("model", [key])
    context.log.info(f"toy_clip {key}: val zero-shot top-1 {accuracy:.3f}; checkpoint {folder}")
    sidecar = json.loads((folder / "open_clip_config.json").read_text())
    return MaterializeResult(metadata={
        "model key": key,
        "val zero-shot top-1": accuracy,
        "final loss": losses[-1],
        "steps": cfg.steps,
        "training seconds": round(seconds, 1),
        "checkpoint": MetadataValue.path(str(folder)),
        "sha256": sidecar["cliplab"]["sha256"],
        **png_metadata(plots.loss_curve(losses, f"toy CLIP {key}"), store.figure_path(f"{key}-loss.png"), "loss curve"),
    })
