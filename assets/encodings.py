"""dataset_manifest → zero_shot_predictions, patch_features: one pass of the image encoder over the dataset.

Both come from the same forward pass, so they are one `multi_asset` (materialise either or both): the
images are encoded once. Batched, `torch.inference_mode`, bf16 autocast on CUDA, float32 on CPU; rows
are written in row groups while computing, so memory does not grow with the dataset.
"""

import contextlib
from typing import Literal

import numpy as np
import pyarrow as pa
from dagster import (
    AssetCheckKey,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    Config,
    MaterializeResult,
    multi_asset,
)
from pydantic import Field

from assets import checks
from assets._arrow import vectors
from assets._report import Progress, png_metadata, table_metadata
from assets.data import class_text_embeddings, dataset_manifest, partition_view, read_class_weights
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.features import patch_features as extract_patch_features
from cliplab.zeroshot import top_k
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.registry import TOY_ARCH
from resources.store import ArtifactStore

TOP_K = 5


class EncodeConfig(Config):
    batch_size: int = Field(default=64, ge=1)
    # how patch_features stores the per-patch `tokens` and `keys` (the bulk of the table; `cls` and `embedding` stay
    # float32): "auto" = float32 for the toy CLIP (and its fine-tunes), float16 for every other architecture, which
    # halves the table (ViT-B/16 × ImageNet-val ≈ 60 GB → 30 GB); readers cast to float32
    storage_dtype: Literal["auto", "float16", "float32"] = "auto"


def is_toy_model(zoo: ModelZoo, key: str) -> bool:
    """Whether `key` is the toy CLIP's architecture (a toy entry, or an AFT fine-tune / image-tower checkpoint of one)."""
    spec = zoo.spec(key)
    for _ in range(16):  # a chain of fine-tunes of fine-tunes; a cycle is the registry's error to report
        if spec.arch == TOY_ARCH or spec.kind == "toy":
            return True
        if not spec.base or spec.base == spec.key or spec.kind not in ("aft", "checkpoint"):
            return False
        spec = zoo.spec(spec.base)
    return False


def storage_dtype(choice: str, zoo: ModelZoo, key: str) -> np.dtype:
    """The numpy dtype patch_features stores tokens and keys in (EncodeConfig.storage_dtype resolved for `key`)."""
    if choice == "auto":
        return np.dtype(np.float32 if is_toy_model(zoo, key) else np.float16)
    return np.dtype(choice)


def features_schema(n: int, c: int, d: int, grid: tuple[int, int], dtype=np.float32) -> pa.Schema:
    kind = pa.from_numpy_dtype(np.dtype(dtype))
    return pa.schema(
        [("image_id", pa.string()), ("label", pa.int64()), ("tokens", pa.list_(kind, n * c)),
         ("keys", pa.list_(kind, n * c)), ("cls", pa.list_(pa.float32(), c)),
         ("embedding", pa.list_(pa.float32(), d))],
        metadata={"grid_h": str(grid[0]), "grid_w": str(grid[1]), "width": str(c), "storage_dtype": np.dtype(dtype).name,
                  "layout": "tokens and keys are row-major (N, C) with N = grid_h * grid_w; pre-ln_post; "
                            "tokens and keys in storage_dtype (float16 or float32), cls and embedding float32"},
    )


PREDICTIONS_SCHEMA = pa.schema([
    ("image_id", pa.string()), ("label", pa.int64()), ("class_name", pa.string()),
    ("top5_index", pa.list_(pa.int64())), ("top5_class", pa.list_(pa.string())),
    ("top5_prob", pa.list_(pa.float32())), ("top5_cosine", pa.list_(pa.float32())),
    ("correct", pa.bool_()), ("correct_top5", pa.bool_()),
])


@multi_asset(
    outs={
        "zero_shot_predictions": AssetOut(code_version="1", is_required=False, group_name="encodings", kinds={"parquet"},
                                          description="Per image the top-5 classes, probabilities and cosines; top-1/top-5 accuracy in metadata."),
        "patch_features": AssetOut(code_version="2", is_required=False, group_name="encodings", kinds={"parquet"},
                                   description="Per image the last block's patch tokens (pre-ln_post) and keys (with in-proj bias), CLS token and unit image embedding."),
    },
    deps=[dataset_manifest, class_text_embeddings, MODEL_CHECKPOINT],
    partitions_def=model_dataset,
    can_subset=True,
    pool="gpu",
    check_specs=[*checks.specs("zero_shot_predictions", "rows_match_manifest", "above_chance"),
                 *checks.specs("patch_features", "rows_match_manifest", "finite", "unit_norm")],
)
def image_encodings(context: AssetExecutionContext, config: EncodeConfig, datasets: DatasetCatalog,
                    zoo: ModelZoo, store: ArtifactStore):
    import torch

    model, dataset = model_and_dataset(context)
    selected = set(context.op_execution_context.selected_output_names)
    dtype = storage_dtype(config.storage_dtype, zoo, model)
    view = partition_view(datasets, store, model, dataset)
    m = zoo.load(model)
    weights = read_class_weights(store, model, dataset).to(m.device) if "zero_shot_predictions" in selected else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if m.device.startswith("cuda") else contextlib.nullcontext()
    names = np.array(view.class_names, dtype=object)
    progress = Progress(context, len(view.manifest), f"encoding {model} × {dataset}")
    correct = np.zeros(len(names)), np.zeros(len(names))  # (hits, totals) per class
    top5_hits, sample, stats = 0, None, checks.VectorStats()
    with contextlib.ExitStack() as stack:
        preds = stack.enter_context(store.writer("zero_shot_predictions", PREDICTIONS_SCHEMA, model=model, dataset=dataset)) if weights is not None else None
        feats = None
        for rows, images in datasets.image_batches(view, m.preprocess, config.batch_size):
            with torch.inference_mode(), autocast:
                images = images.to(m.device, non_blocking=True)
                if "patch_features" in selected:
                    f = extract_patch_features(m.model, images)
                    emb = f.embedding
                else:
                    emb = torch.nn.functional.normalize(m.model.encode_image(images).float(), dim=-1)
            labels = rows["label"].to_numpy()
            if preds is not None:
                idx, prob, cos = (t.cpu().numpy() for t in top_k(emb, weights, k=TOP_K))
                hit = idx[:, 0] == labels
                np.add.at(correct[0], labels, hit)
                np.add.at(correct[1], labels, 1)
                top5_hits += int((idx == labels[:, None]).any(1).sum())
                preds.write_table(pa.table({
                    "image_id": rows["image_id"].to_list(), "label": labels, "class_name": rows["class_name"].to_list(),
                    "top5_index": idx.tolist(), "top5_class": names[idx].tolist(),
                    "top5_prob": prob.tolist(), "top5_cosine": cos.tolist(),
                    "correct": hit, "correct_top5": (idx == labels[:, None]).any(1),
                }, schema=PREDICTIONS_SCHEMA))
            if "patch_features" in selected:
                if feats is None:
                    n, c = f.tokens.shape[1:]
                    schema = features_schema(n, c, f.embedding.shape[1], f.grid, dtype)
                    feats = stack.enter_context(store.writer("patch_features", schema, model=model, dataset=dataset))
                    sample = (images[:6].float().cpu(), f.tokens[:6].cpu().numpy(), f.grid)
                tokens = f.tokens.float().cpu().numpy().astype(dtype, copy=False)
                keys = f.keys.float().cpu().numpy().astype(dtype, copy=False)
                # the stored values: a float16 overflow (|x| > 65504) fails the `finite` check
                stats.add(tokens, keys, f.cls.float().cpu().numpy(), unit=f.embedding.float().cpu().numpy())
                feats.write_table(pa.table({
                    "image_id": rows["image_id"].to_list(), "label": labels,
                    "tokens": vectors(tokens, dtype=dtype), "keys": vectors(keys, dtype=dtype),
                    "cls": vectors(f.cls.cpu().numpy()), "embedding": vectors(f.embedding.cpu().numpy()),
                }, schema=feats.schema))
            progress.update(len(rows))
    progress.close()
    throughput = {"images": progress.done, "seconds": round(progress.seconds, 2), "images/s": round(progress.rate, 1), "device": m.device,
                  "resize mode": zoo.resize_mode}
    if preds is not None:
        per_class = np.divide(correct[0], correct[1], out=np.zeros_like(correct[0]), where=correct[1] > 0)
        top1 = float(correct[0].sum() / max(1, correct[1].sum()))
        context.log.info(f"zero-shot {model} × {dataset}: top-1 {top1:.4f} over {progress.done} images")
        results = [checks.rows_match_manifest("zero_shot_predictions", progress.done, len(view.manifest)),
                   checks.above_chance("zero_shot_predictions", top1, len(names))]
        yield MaterializeResult(asset_key="zero_shot_predictions", check_results=_selected(context, results), metadata={
            "dagster/row_count": progress.done, "top-1 accuracy": top1,
            "top-5 accuracy": top5_hits / max(1, progress.done), **throughput,
            **table_metadata(store.table_path("zero_shot_predictions", model=model, dataset=dataset)),
            **png_metadata(plots.per_class_accuracy(list(names), per_class, f"{model} × {dataset}"),
                           store.figure_path("zero_shot_predictions", f"{model}__{dataset}.png"), "per-class accuracy"),
        })
    if "patch_features" in selected:
        meta = {"dagster/row_count": progress.done, **throughput, "storage dtype (tokens, keys)": str(dtype),
                **table_metadata(store.table_path("patch_features", model=model, dataset=dataset))}
        if sample is not None:
            meta["grid"] = f"{sample[2][0]}x{sample[2][1]}"
            meta.update(png_metadata(plots.token_pca_overlay(_unnormalise(sample[0], m), sample[1], sample[2],
                                                             "patch tokens: first 3 PCs as RGB"),
                                     store.figure_path("patch_features", f"{model}__{dataset}.png"), "token PCA"))
        results = [checks.rows_match_manifest("patch_features", progress.done, len(view.manifest)),
                   *stats.results("patch_features")]
        yield MaterializeResult(asset_key="patch_features", metadata=meta, check_results=_selected(context, results))


def _selected(context, results: list) -> list:
    """The results of the checks this run selected (a subset run may leave some out)."""
    keys = context.selected_asset_check_keys
    return [r for r in results if AssetCheckKey(AssetKey(r.asset_key.path), r.check_name) in keys]


def _unnormalise(images, m) -> np.ndarray:
    """Preprocessed (B, 3, H, W) → displayable uint8 (B, H, W, 3)."""
    import torch

    mean = torch.tensor(m.mean).view(1, 3, 1, 1)
    std = torch.tensor(m.std).view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1).mul(255).byte().permute(0, 2, 3, 1).numpy()
