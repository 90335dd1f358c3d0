"""dataset_manifest → class_text_embeddings: what a (model, dataset) partition analyses, and its classifier."""

import pyarrow as pa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset

from assets import checks
from assets._arrow import vectors
from assets._report import table_metadata
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from assets.toy.world import toyworld
from cliplab.zeroshot import class_embeddings
from resources.datasets import DatasetCatalog, DatasetView
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.store import ArtifactStore


class ManifestConfig(Config):
    on_corrupt: str = "skip"  # "skip": drop corrupt images and list them; "fail": the partition fails


@asset(code_version="1", partitions_def=model_dataset, deps=[toyworld, MODEL_CHECKPOINT], group_name="data", kinds={"parquet"})
def dataset_manifest(context: AssetExecutionContext, config: ManifestConfig, datasets: DatasetCatalog,
                     zoo: ModelZoo, store: ArtifactStore) -> MaterializeResult:
    """One row per usable image: image_id, path (folders) or toy_index (toyworld), label, class_name."""
    model, dataset = model_and_dataset(context)
    zoo.check_ready(model)  # an unknown model or unusable checkpoint fails here, before any image is decoded
    view = datasets.open(dataset, on_corrupt=config.on_corrupt)
    path = store.write("dataset_manifest", view.manifest, model=model, dataset=dataset)
    if view.skipped:
        context.log.warning(f"{len(view.skipped)} file(s) skipped: {view.skipped[:5]}")
    return MaterializeResult(metadata={
        "dagster/row_count": len(view.manifest),
        "classes": len(view.class_names),
        "templates": len(view.templates),
        "skipped files": MetadataValue.json([{"file": i, "reason": r} for i, r in view.skipped]),
        **table_metadata(path),
    })


@asset(code_version="1", partitions_def=model_dataset, deps=[dataset_manifest, MODEL_CHECKPOINT], group_name="data", kinds={"parquet", "lancedb"},
       check_specs=checks.specs("class_text_embeddings", "finite", "unit_norm"))
def class_text_embeddings(context: AssetExecutionContext, datasets: DatasetCatalog, zoo: ModelZoo,
                          store: ArtifactStore, lance: LanceStore) -> MaterializeResult:
    """W (K, D): per class the mean of its template prompts' unit text embeddings, re-normalised."""
    import torch

    model, dataset = model_and_dataset(context)
    view = partition_view(datasets, store, model, dataset)
    m = zoo.load(model)
    with torch.inference_mode():
        weights = class_embeddings(lambda t: m.model.encode_text(t.to(m.device)), m.tokenizer, view.class_names, view.templates)
    k, d = weights.shape
    table = pa.table({
        "model": [model] * k, "dataset": [dataset] * k,
        "class_index": pa.array(range(k), pa.int64()),
        "class_name": view.class_names,
        "n_templates": pa.array([len(view.templates)] * k, pa.int32()),
        "vector": vectors(weights.cpu().numpy()),
    })
    path = store.write("class_text_embeddings", table.drop_columns(["model", "dataset"]), model=model, dataset=dataset)
    lance.replace_partition("class_text_embeddings", table, model, dataset, key="class_index")
    stats = checks.VectorStats()
    stats.add(unit=weights.float().cpu().numpy())
    return MaterializeResult(check_results=stats.results("class_text_embeddings"), metadata={
        "dagster/row_count": k, "embedding dim": d, "templates per class": len(view.templates),
        **table_metadata(path), "lancedb table": f"{lance.uri}/class_text_embeddings",
    })


def partition_view(datasets: DatasetCatalog, store: ArtifactStore, model: str, dataset: str) -> DatasetView:
    """The dataset as this partition's `dataset_manifest` stored it: its usable images, none decoded again."""
    return datasets.open(dataset, manifest=store.read("dataset_manifest", model=model, dataset=dataset).collect())


def read_class_weights(store: ArtifactStore, model: str, dataset: str):
    """W (K, D) float32 tensor from the class_text_embeddings partition."""
    import numpy as np
    import torch

    df = store.read("class_text_embeddings", model=model, dataset=dataset).sort("class_index").collect()
    return torch.from_numpy(np.stack(df["vector"].to_numpy()).astype(np.float32))
