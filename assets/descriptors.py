"""descriptor_embeddings: the dataset's descriptor bank D encoded by the model (LanceDB), mutual knowledge's D."""

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

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


def bank_for(kind: str, reference: ReferenceData):
    if kind == "toyworld":
        return descriptor_bank(tw.descriptors())
    if kind in PUBLISHED:
        return reference.descriptor_bank(PUBLISHED[kind])
    raise CliplabError(f"no descriptor bank for datasets of kind {kind!r}: published banks exist for "
                       f"{', '.join(sorted(PUBLISHED))} (and toyworld has its own)")


@asset(partitions_def=model_dataset, deps=["dataset_manifest"], group_name="mutual_knowledge", kinds={"lancedb"})
def descriptor_embeddings(context: AssetExecutionContext, datasets: DatasetCatalog, zoo: ModelZoo,
                          reference: ReferenceData, lance: LanceStore) -> MaterializeResult:
    """Per descriptor of D: unit text embeddings with no template and with "a photo showing {d}", and its classes."""
    import torch

    model, dataset = model_and_dataset(context)
    bank = bank_for(datasets.spec(dataset).kind, reference)
    m = zoo.load(model)
    encode = lambda t: m.model.encode_text(t.to(m.device))
    with torch.inference_mode():
        raw = class_embeddings(encode, m.tokenizer, list(bank.descriptors), ["{}"]).cpu().numpy()
        photo = class_embeddings(encode, m.tokenizer, list(bank.descriptors), [PHOTO_TEMPLATE]).cpu().numpy()
    n, d = raw.shape
    vec = lambda a: pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a, np.float32).ravel()), d)
    table = pa.table({
        "model": [model] * n, "dataset": [dataset] * n,
        "descriptor_index": pa.array(range(n), pa.int64()), "descriptor": list(bank.descriptors),
        "classes": pa.array([list(c) for c in bank.classes], pa.list_(pa.int32())),
        "vector": vec(raw), "vector_photo": vec(photo),
    })
    lance.replace_partition("descriptor_embeddings", table, model, dataset, key="descriptor_index")
    context.log.info(f"descriptor bank of {dataset}: {n} unique descriptors encoded by {model}")
    return MaterializeResult(metadata={
        "dagster/row_count": n, "embedding dim": d, "classes": len(bank.class_names),
        "descriptors shared by several classes": sum(len(c) > 1 for c in bank.classes),
        "templates": MetadataValue.json(["{}", PHOTO_TEMPLATE]),
        "lancedb table": f"{lance.uri}/descriptor_embeddings",
    })
