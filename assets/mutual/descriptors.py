"""descriptor_embeddings: the dataset's descriptor bank D encoded by the model (LanceDB), mutual knowledge's D."""

import json
from pathlib import Path

import pyarrow as pa
from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._arrow import vectors
from assets._report import table_metadata
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab.errors import CliplabError
from cliplab.mutual.descriptors import descriptor_bank, descriptor_bank_for_classes
from cliplab.toy import toyworld as tw
from cliplab.zeroshot import class_embeddings
from resources.datasets import DatasetCatalog
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.reference_data import ReferenceData
from resources.store import ArtifactStore

PHOTO_TEMPLATE = "a photo showing {}"
# dataset kind → published descriptor file (`resources.reference_data`)
PUBLISHED = {"imagenet": "imagenet", "places365": "places365", "food101": "food101"}


def bank_for(spec, reference: ReferenceData, datasets: DatasetCatalog):
    """D of a dataset: the registry entry's own `descriptors = "file.json"` (matched to the dataset's class names),
    toyworld's, or the published bank."""
    if spec.options.get("descriptors"):
        path = Path(spec.options["descriptors"])
        if not path.is_file():
            raise CliplabError(f"dataset {spec.key!r}: descriptor file {path} does not exist")
        try:
            per_class = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CliplabError(f"dataset {spec.key!r}: descriptor file {path} is not JSON ({e})") from None
        class_names = datasets.class_names(spec.key)
        try:
            return descriptor_bank_for_classes(per_class, class_names)
        except CliplabError as e:
            raise CliplabError(f"dataset {spec.key!r}: descriptor file {path}: {e}") from None
    if spec.kind == "toyworld":
        return descriptor_bank(tw.descriptors())
    if spec.kind in PUBLISHED:
        return reference.descriptor_bank(PUBLISHED[spec.kind])
    raise CliplabError(f"dataset {spec.key!r} has no descriptor bank: published banks exist for "
                       f"{', '.join(sorted(PUBLISHED))} folders; for others add descriptors = \"<file>.json\" "
                       "({class name: [descriptor, ...]}) to its registry entry")


@asset(code_version="1", partitions_def=model_dataset, deps=["dataset_manifest", MODEL_CHECKPOINT], group_name="mutual_knowledge", kinds={"lancedb"})
def descriptor_embeddings(context: AssetExecutionContext, datasets: DatasetCatalog, zoo: ModelZoo,
                          reference: ReferenceData, lance: LanceStore) -> MaterializeResult:
    """Per descriptor of D: unit text embeddings with no template and with "a photo showing {d}", and its classes."""
    import torch

    model, dataset = model_and_dataset(context)
    bank = bank_for(datasets.spec(dataset), reference, datasets)
    m = zoo.load(model)
    encode = lambda t: m.model.encode_text(t.to(m.device))
    with torch.inference_mode():
        raw = class_embeddings(encode, m.tokenizer, list(bank.descriptors), ["{}"]).cpu().numpy()
        photo = class_embeddings(encode, m.tokenizer, list(bank.descriptors), [PHOTO_TEMPLATE]).cpu().numpy()
    n, d = raw.shape
    table = pa.table({
        "model": [model] * n, "dataset": [dataset] * n,
        "descriptor_index": pa.array(range(n), pa.int64()), "descriptor": list(bank.descriptors),
        "classes": pa.array([list(c) for c in bank.classes], pa.list_(pa.int32())),
        "vector": vectors(raw), "vector_photo": vectors(photo),
    })
    lance.replace_partition("descriptor_embeddings", table, model, dataset, key="descriptor_index")
    context.log.info(f"descriptor bank of {dataset}: {n} unique descriptors encoded by {model}")
    return MaterializeResult(metadata={
        "dagster/row_count": n, "embedding dim": d, "classes": len(bank.class_names),
        "descriptors shared by several classes": sum(len(c) > 1 for c in bank.classes),
        "templates": MetadataValue.json(["{}", PHOTO_TEMPLATE]),
        "lancedb table": f"{lance.uri}/descriptor_embeddings",
    })


class ClassDescriptorConfig(Config):
    u: int = Field(default=50, ge=1)  # the paper's u for MI; its Venn figure uses the first 15
    template: str = "none"  # descriptor embeddings: "none" (raw text) or "photo" ("a photo showing {d}")


CLASS_DESCRIPTOR_SCHEMA = pa.schema([
    ("class_index", pa.int64()), ("class_name", pa.string()), ("rank", pa.int32()),
    ("descriptor_index", pa.int64()), ("descriptor", pa.string()), ("cosine", pa.float32()),
])


@asset(code_version="1", partitions_def=model_dataset, deps=[descriptor_embeddings, "class_text_embeddings"],
       group_name="mutual_knowledge", kinds={"parquet"})
def class_descriptors(context: AssetExecutionContext, config: ClassDescriptorConfig, store: ArtifactStore,
                      lance: LanceStore) -> MaterializeResult:
    """D_ŷ per class: the u descriptors of D nearest the class text embedding, ranked by cosine."""
    import numpy as np
    import polars as pl

    if config.template not in ("none", "photo"):
        raise CliplabError(f"template must be 'none' or 'photo', not {config.template!r}")
    model, dataset = model_and_dataset(context)
    column = "vector" if config.template == "none" else "vector_photo"
    bank = (lance.table("descriptor_embeddings", model=model).to_polars()
            .filter((pl.col("model") == model) & (pl.col("dataset") == dataset))
            .select("descriptor_index", "descriptor", column).sort("descriptor_index").collect())
    if bank.is_empty():
        raise CliplabError(f"descriptor_embeddings has no rows for model={model}, dataset={dataset}: materialise it first")
    classes = store.read("class_text_embeddings", model=model, dataset=dataset).sort("class_index").collect()
    w = classes["vector"].to_numpy().astype(np.float32)  # (K, D)
    d = bank[column].to_numpy().astype(np.float32)  # (|D|, D)
    u = min(config.u, len(bank))
    cos = w @ d.T  # (K, |D|) both sides unit norm
    top = np.argsort(-cos, axis=1, kind="stable")[:, :u]  # (K, u)
    k = len(classes)
    table = pa.table({
        "class_index": np.repeat(classes["class_index"].to_numpy(), u),
        "class_name": np.repeat(classes["class_name"].to_numpy(), u),
        "rank": np.tile(np.arange(u, dtype=np.int32), k),
        "descriptor_index": bank["descriptor_index"].to_numpy()[top].ravel(),
        "descriptor": bank["descriptor"].to_numpy()[top].ravel(),
        "cosine": np.take_along_axis(cos, top, axis=1).ravel().astype(np.float32),
    }, schema=CLASS_DESCRIPTOR_SCHEMA)
    path = store.write("class_descriptors", table, model=model, dataset=dataset)
    return MaterializeResult(metadata={"dagster/row_count": len(table), "u": u, "template": config.template,
                                       "classes": k, **table_metadata(path)})
