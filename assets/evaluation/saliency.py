"""saliency_maps: per image and method, the explanation of the target class prompt, at the model's input size.

Simple Gradient, Grad-CAM and Grad-ECLIP (`cliplab.evaluation.saliency`, one signature), batched: one forward
and one backward per batch and method, never a per-image model call. Maps are stored as float16 in Parquet
row groups while they are computed (bounded memory), with a downsampled copy when the input is larger than
`downsample` px. The target text is each image's class prompt (the class_text_embeddings row) of its ground-truth
class or of the model's zero-shot prediction.
"""

from typing import Optional

import numpy as np
import polars as pl
import pyarrow as pa
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, asset
from pydantic import Field

from assets._arrow import vectors
from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.evaluation._common import applicable_methods, check_target, pixel_model, positive, subset, target_classes
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.evaluation.saliency import SALIENCY_METHODS
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.store import ArtifactStore

PREVIEW = 4  # images in the metadata picture


class SaliencyConfig(Config):
    methods: list[str] = list(SALIENCY_METHODS)
    target: str = "ground_truth"  # or "prediction": the class the model chose
    batch_size: int = Field(default=32, ge=1)
    images: Optional[int] = None  # a seeded subset of the dataset (None: every image)
    downsample: int = Field(default=56, ge=0)  # also store a downsample × downsample copy when the input is larger (0: never)
    seed: int = Field(default=0, ge=0)


def maps_schema(h: int, w: int, small: int) -> pa.Schema:
    fields = [("image_id", pa.string()), ("label", pa.int64()), ("target", pa.int64()), ("method", pa.string()),
              ("map", pa.list_(pa.float16(), h * w))]
    if small:
        fields.append(("map_small", pa.list_(pa.float16(), small * small)))
    return pa.schema(fields, metadata={"height": str(h), "width": str(w), "small": str(small),
                                       "layout": "map is row-major (height, width), float16 in [0, 1]"})


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("dataset_manifest"), AssetKey("class_text_embeddings"),
                                           AssetKey("zero_shot_predictions"), MODEL_CHECKPOINT],
       group_name="evaluation", kinds={"parquet"}, pool="gpu")
def saliency_maps(context: AssetExecutionContext, config: SaliencyConfig, datasets: DatasetCatalog, zoo: ModelZoo,
                  store: ArtifactStore) -> MaterializeResult:
    """Simple Gradient, Grad-CAM and Grad-ECLIP of every image's class prompt, float16 at input resolution."""
    import torch
    import torch.nn.functional as F

    model, dataset = model_and_dataset(context)
    check_target(config.target)
    positive("images", config.images)
    if config.downsample < 0:
        raise CliplabError(f"downsample must be >= 0, got {config.downsample}")
    pm = pixel_model(zoo, store, model, dataset)
    methods, skipped = applicable_methods(list(config.methods), pm.family, SALIENCY_METHODS)
    if skipped:
        context.log.warning(f"{model} is a {pm.family}: skipping {skipped} (ViT only)")
    view = subset(partition_view(datasets, store, model, dataset), config.images, config.seed)
    h, w = pm.size
    small = config.downsample if 0 < config.downsample < max(h, w) else 0
    progress = Progress(context, len(view.manifest), f"saliency {model} × {dataset}")
    preview = None
    with store.writer("saliency_maps", maps_schema(h, w, small), model=model, dataset=dataset) as out:
        for rows, pixels in datasets.image_batches(view, pm.to_pixels, config.batch_size):
            pixels = pixels.to(pm.device)
            classes = torch.as_tensor(target_classes(store, model, dataset, rows, config.target))
            text = pm.text_for(classes)
            if preview is None:
                preview = {"pixels": pixels[:PREVIEW].cpu(), "ids": rows["image_id"][:PREVIEW].to_list(), "maps": {}}
            for method in methods:
                with pm.autocast():
                    maps = SALIENCY_METHODS[method](pm.encoder, pixels, text).float()
                columns = {"image_id": rows["image_id"].to_list(), "label": rows["label"].to_numpy(),
                           "target": classes.numpy(), "method": [method] * len(rows),
                           "map": vectors(maps.cpu().numpy(), dtype=np.float16)}
                if small:
                    down = F.interpolate(maps[:, None], size=(small, small), mode="area")[:, 0]
                    columns["map_small"] = vectors(down.cpu().numpy(), dtype=np.float16)
                out.write_table(pa.table(columns, schema=out.schema))
                preview["maps"].setdefault(method, maps[:PREVIEW].cpu().numpy())
            progress.update(len(rows))
    progress.close()
    figure = {} if preview is None else png_metadata(
        _figure(store, zoo, model, dataset, preview, methods), store.figure_path("saliency_maps", f"{model}__{dataset}.png"),
        "saliency maps")
    return MaterializeResult(metadata={
        "dagster/row_count": progress.done * len(methods),
        "images": progress.done, "methods": methods, "skipped methods": skipped, "target": config.target,
        "map size": f"{h}x{w}", "downsampled copy": f"{small}x{small}" if small else "none",
        "images/s": round(progress.rate, 2), "device": pm.device, "seed": config.seed,
        **table_metadata(store.table_path("saliency_maps", model=model, dataset=dataset)),
        **figure,
    })


def related_models(zoo: ModelZoo, model: str) -> list[str]:
    """The base of an AFT model and the AFT models of a base: what is compared side by side."""
    spec = zoo.spec(model)
    keys = [spec.base] if spec.kind == "aft" else []
    keys += [k for k in zoo.known_keys() if k != model and zoo.spec(k).kind == "aft" and zoo.spec(k).base == model]
    return keys


def _figure(store: ArtifactStore, zoo: ModelZoo, model: str, dataset: str, preview: dict, methods: list[str]) -> bytes:
    """Images × methods for this model, and for its base / AFT models where their maps of the same images exist."""
    images = (preview["pixels"].permute(0, 2, 3, 1).clamp(0, 1).numpy() * 255).astype(np.uint8)
    panels = {(model, m): preview["maps"][m] for m in methods}
    for other in related_models(zoo, model):
        if not store.exists("saliency_maps", model=other, dataset=dataset):
            continue
        df = (store.read("saliency_maps", model=other, dataset=dataset)
              .filter(pl.col("image_id").is_in(preview["ids"]) & pl.col("method").is_in(methods))
              .select("image_id", "method", "map").collect())
        for m in methods:
            got = {r["image_id"]: r["map"] for r in df.filter(pl.col("method") == m).iter_rows(named=True)}
            if all(i in got for i in preview["ids"]):
                panels[(other, m)] = np.stack([np.asarray(got[i], np.float32).reshape(images.shape[1:3]) for i in preview["ids"]])
    return plots.saliency_grid(images, panels, f"{dataset}: saliency of the target class prompt")
