"""dataset_manifest → head_contributions: each attention head's direct contribution to the image embedding.

Per image, for the last k layers (or all), the token-summed contribution of every head to the unit image
embedding e/‖e‖ (Gandelsman et al., `cliplab.heads.decomposition`), stored in LanceDB (table
`head_contributions`, one row per image × layer × head, filter on model/dataset/layer/head) for the
CLIP-InterpreT nearest-neighbour queries and TextSpan. The other parts of the decomposition (ln_pre term,
MLP terms, attention outputs of layers not split into heads) go to the Parquet side table `head_terms`, so
Σ parts == e/‖e‖ can be checked from stored data alone.
"""

import contextlib

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets import checks
from assets._arrow import vectors
from assets._report import Progress
from assets.data import partition_view
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab.errors import CliplabError
from cliplab.heads.decomposition import decompose_image
from resources.datasets import DatasetCatalog
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.reference_data import ReferenceData
from resources.store import ArtifactStore

TABLE = "head_contributions"


class HeadConfig(Config):
    layers: int = Field(default=4, ge=1)  # decompose the last k layers into heads (the paper's analyses use the last 4)
    all_layers: bool = False  # decompose every layer (overrides `layers`)
    batch_size: int = Field(default=32, ge=1)


def _nested(values: np.ndarray, n: int, d: int) -> pa.FixedSizeListArray:
    """(B, n, d) → one (n × d) fixed-size list of fixed-size lists per row."""
    return pa.FixedSizeListArray.from_arrays(vectors(values, d), n)


def head_terms_schema(d: int, n_layers: int, layers: tuple[int, ...], rest_layers: tuple[int, ...], n_heads: int) -> pa.Schema:
    return pa.schema(
        [("image_id", pa.string()), ("ln_pre", pa.list_(pa.float32(), d)),
         ("mlps", pa.list_(pa.list_(pa.float32(), d), n_layers)),
         # a variable-length outer list: with every layer split it is empty, and zero-width fixed-size
         # lists are not readable by polars
         ("rest", pa.list_(pa.list_(pa.float32(), d))),
         ("embedding", pa.list_(pa.float32(), d))],
        metadata={"layers": ",".join(map(str, layers)), "rest_layers": ",".join(map(str, rest_layers)),
                  "n_layers": str(n_layers), "n_heads": str(n_heads), "dim": str(d),
                  "layout": "mlps[l] = MLP of layer l (all layers); rest[i] = whole attention output of "
                            "rest_layers[i]; ln_pre + Σ mlps + Σ rest + Σ head_contributions(layers) = embedding"},
    )


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("dataset_manifest"), MODEL_CHECKPOINT], group_name="head_spans",
       kinds={"lancedb"}, pool="gpu", check_specs=checks.specs("head_contributions", "parts_sum_to_embedding"))
def head_contributions(context: AssetExecutionContext, config: HeadConfig, datasets: DatasetCatalog,
                       zoo: ModelZoo, store: ArtifactStore, lance: LanceStore) -> MaterializeResult:
    """Per image × layer × head (last k layers) the head's token-summed direct contribution to e/‖e‖ (LanceDB)."""
    import torch

    model, dataset = model_and_dataset(context)
    view = partition_view(datasets, store, model, dataset)
    m = zoo.load(model)
    which = "all" if config.all_layers else config.layers
    progress = Progress(context, len(view.manifest), f"head contributions {model} × {dataset}")
    # Streamed: each batch's LanceDB rows (B·Lk·H·d float32: ≈ 4.9 GB for 50k images × 4 × 12 × 512 of a base
    # model) go to a local spool as they are computed and the partition is replaced in one commit that reads the
    # spool back (LanceStore.replace_partition_stream), so memory does not grow with the dataset.
    state = {"max_err": 0.0, "layers": (), "n_heads": 0, "d": 0, "seconds": 0.0}

    def batches():
        terms = None
        with contextlib.ExitStack() as stack:
            for rows, images in datasets.image_batches(view, m.preprocess, config.batch_size):
                with torch.inference_mode():
                    dec = decompose_image(m.model, images.to(m.device, torch.float32), layers=which)
                    err = float((dec.total() - dec.embedding).abs().max())
                state["max_err"] = max(state["max_err"], err)
                b, lk, n_heads, d = dec.heads.shape
                state.update(layers=dec.layers, n_heads=n_heads, d=d)
                ids = rows["image_id"].to_list()
                if terms is None:
                    schema = head_terms_schema(d, dec.mlps.shape[1], dec.layers, dec.rest_layers, n_heads)
                    terms = stack.enter_context(store.writer("head_terms", schema, model=model, dataset=dataset))
                    context.log.info(f"decomposition check, first batch: max |Σ parts − e| = {err:.3g}")
                n_rest = dec.rest.shape[1]
                terms.write_table(pa.table({
                    "image_id": ids, "ln_pre": vectors(dec.ln_pre.cpu().numpy(), d),
                    "mlps": _nested(dec.mlps.cpu().numpy(), dec.mlps.shape[1], d),
                    "rest": pa.ListArray.from_arrays(pa.array(np.arange(b + 1, dtype=np.int32) * n_rest),
                                                     vectors(dec.rest.cpu().numpy(), d)),
                    "embedding": vectors(dec.embedding.cpu().numpy(), d),
                }, schema=terms.schema))
                image_id = np.repeat(np.array(ids, dtype=object), lk * n_heads)
                layer = np.tile(np.repeat(np.array(dec.layers, dtype=np.int32), n_heads), b)
                head = np.tile(np.arange(n_heads, dtype=np.int32), b * lk)
                n = len(image_id)
                yield pa.table({
                    "model": pa.array([model] * n, pa.string()), "dataset": pa.array([dataset] * n, pa.string()),
                    "cell": pa.array([f"{i}|{l}|{h}" for i, l, h in zip(image_id, layer, head)], pa.string()),
                    "layer": pa.array(layer, pa.int32()), "head": pa.array(head, pa.int32()),
                    "image_id": pa.array(image_id.tolist(), pa.string()),
                    "vector": vectors(dec.heads.cpu().numpy(), d),
                })
                progress.update(len(ids))
        progress.close()  # images/s counts the computation, not the commit
        state["seconds"] = progress.seconds
        if terms is None:
            raise CliplabError(f"dataset {dataset!r} has no images to decompose")

    n_rows = lance.replace_partition_stream(TABLE, batches(), model, dataset, key="cell")
    max_err, layers, n_heads, d = state["max_err"], state["layers"], state["n_heads"], state["d"]
    rate = progress.done / max(state["seconds"], 1e-9)
    context.log.info(f"{TABLE} {model} × {dataset}: {n_rows} rows, layers {list(layers)}, {n_heads} heads, "
                     f"{rate:.1f} images/s, max |Σ parts − e| = {max_err:.3g}")
    return MaterializeResult(check_results=[checks.parts_sum_to_embedding("head_contributions", max_err)], metadata={
        "dagster/row_count": n_rows, "images": progress.done, "layers decomposed": MetadataValue.json(list(layers)),
        "heads per layer": n_heads, "embedding dim": d, "images/s": round(rate, 1),
        "seconds": round(state["seconds"], 2), "seconds with the commit": round(progress.seconds, 2), "device": m.device,
        "max |Σ parts − e|": max_err,
        "lancedb table": f"{lance.uri}/{TABLE}",
        "head_terms path": MetadataValue.path(store.table_path("head_terms", model=model, dataset=dataset)),
    })


TEXT_BANKS = ("image_descriptions_general", "google_3498_english")  # TextSpan's bank and its size-matched word control


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("dataset_manifest"), MODEL_CHECKPOINT], group_name="head_spans", kinds={"lancedb"})
def text_bank_embeddings(context: AssetExecutionContext, datasets: DatasetCatalog, zoo: ModelZoo,
                         reference: ReferenceData, lance: LanceStore) -> MaterializeResult:
    """Unit text embeddings (no template) of the TextSpan banks, plus toyworld's phrase bank with its attribute families."""
    import torch

    from cliplab.toy import toyworld
    from cliplab.zeroshot import class_embeddings

    model, dataset = model_and_dataset(context)
    banks = {name: [(t, "") for t in reference.lines(name)] for name in TEXT_BANKS}
    if datasets.spec(dataset).kind == "toyworld":
        banks["toyworld_phrases"] = toyworld.phrase_bank()
    m = zoo.load(model)
    rows = []
    with torch.inference_mode():
        for name, entries in banks.items():
            texts = [t for t, _ in entries]
            emb = class_embeddings(lambda t: m.model.encode_text(t.to(m.device)), m.tokenizer, texts, ["{}"]).cpu().numpy()
            rows.append(pa.table({
                "model": [model] * len(texts), "dataset": [dataset] * len(texts), "bank": [name] * len(texts),
                "text_index": pa.array(range(len(texts)), pa.int64()), "text": texts,
                "family": [f for _, f in entries], "vector": vectors(emb),
            }))
    table = pa.concat_tables(rows)
    table = table.append_column("entry", pa.array([f"{b}|{i}" for b, i in zip(table["bank"].to_pylist(), table["text_index"].to_pylist())]))
    lance.replace_partition("text_bank_embeddings", table, model, dataset, key="entry")
    return MaterializeResult(metadata={"dagster/row_count": len(table),
                                       "banks": MetadataValue.json({n: len(e) for n, e in banks.items()}),
                                       "lancedb table": f"{lance.uri}/text_bank_embeddings"})
