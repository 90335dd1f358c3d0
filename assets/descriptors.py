"""descriptor_embeddings: the dataset's descriptor bank D encoded by the model (LanceDB), mutual knowledge's D."""

import json
from pathlib import Path

import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets._arrow import vectors
from assets.partitions import model_and_dataset, model_dataset
from cliplab import toyworld as tw
from cliplab.descriptors import descriptor_bank
from cliplab.errors import CliplabError
from cliplab.zeroshot import class_embeddings
from resources.datasets import DatasetCatalog
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.reference_data import ReferenceData

PHOTO_TEMPLATE = "a photo showing {}"
# dataset kind → published descriptor file (`resources.reference_data`)
PUBLISHED = {"imagenet": "imagenet", "places365": "places365", "food101": "food101"}


def bank_for(spec, reference: ReferenceData):
    """D of a dataset: the registry entry's own `descriptors = "file.json"`, toyworld's, or the published bank."""
    if spec.options.get("descriptors"):
        path = Path(spec.options["descriptors"])
        if not path.is_file():
            raise CliplabError(f"dataset {spec.key!r}: descriptor file {path} does not exist")
        try:
            per_class = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CliplabError(f"dataset {spec.key!r}: descriptor file {path} is not JSON ({e})") from None
        return descriptor_bank(per_class)
    if spec.kind == "toyworld":
        return descriptor_bank(tw.descriptors())
    if spec.kind in PUBLISHED:
        return reference.descriptor_bank(PUBLISHED[spec.kind])
    raise CliplabError(f"dataset {spec.key!r} has no descriptor bank: published banks exist for "
                       f"{', '.join(sorted(PUBLISHED))} folders; for others add descriptors = \"<file>.json\" "
                       "({class name: [descriptor, ...]}) to its registry entry")


@asset(partitions_def=model_dataset, deps=["dataset_manifest"], group_name="mutual_knowledge", kinds={"lancedb"})
def descriptor_embeddings(context: AssetExecutionContext, datasets: DatasetCatalog, zoo: ModelZoo,
                          reference: ReferenceData, lance: LanceStore) -> MaterializeResult:
    """Per descriptor of D: unit text embeddings with no template and with "a photo showing {d}", and its classes."""
    import torch

    model, dataset = model_and_dataset(context)
    bank = bank_for(datasets.spec(dataset), reference)
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
