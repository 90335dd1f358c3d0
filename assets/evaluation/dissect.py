"""neuron_concepts: a concept for every neuron of one ViT block, by CLIP-Dissect (soft-WPMI; aft.md §2).

Activations: the block's output (the residual stream) at the CLS token, from the model, on the probe images (the
dataset's images: a seeded subset, or all of them). Concept probabilities: from the probing CLIP (`probe`, by default
the model itself), softmax over the concept set of 10 · cos(image, concept), concepts embedded as bare words.
Concepts: CLIP-Dissect's published 20k set (`concepts_20k`), or on toyworld its phrase bank (colours, shapes,
positions, counts, textures, backgrounds: what toy images can show, which English's 20k commonest words mostly
cannot). Per neuron: the best concept and the runner-up with their soft-WPMI scores ↑ (`cliplab.evaluation.dissect`).
A partition holds one block: dissecting another block replaces it.

LanceDB `neuron_concepts` also holds one vector per neuron (and the probe's key): the unit mean of the probe's image
embeddings of the neuron's `top_k` (100) most activating probe images, so neurons can be searched by concept text:
embed the text with the same probe (`text_embeddings`) and take the nearest vectors (`search_neurons`). Activations
and embeddings are float32: bfloat16 activations tie often and would reorder the top-100.
"""

from typing import Optional

import numpy as np
import polars as pl
import pyarrow as pa
import torch
import torch.nn.functional as F
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._arrow import vectors
from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.evaluation._common import dataset_default, positive, subset
from assets.evaluation.saliency import related_models
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.evaluation.dissect import TOP_K, concept_probabilities, label_neurons, neuron_activations, soft_wpmi
from cliplab.toy import toyworld
from resources.datasets import DatasetCatalog, DatasetView
from resources.lance import LanceStore, _sql_str
from resources.models import LoadedModel, ModelZoo
from resources.reference_data import ReferenceData
from resources.store import ArtifactStore

TABLE = "neuron_concepts"
TEXT_BATCH = 1024  # concept texts encoded at once
SCHEMA = pa.schema([("layer", pa.int64()), ("neuron", pa.int64()), ("concept", pa.string()), ("score", pa.float64()),
                    ("second_concept", pa.string()), ("second_score", pa.float64())],
                   metadata={"score": "soft-WPMI ↑ of the neuron's best concept", "layer": "resblock index from 0"})


class DissectConfig(Config):
    layer: int = -1  # resblock of the model's image tower; negative counts from the end (-1: the last)
    probe: str = ""  # model key of the probing CLIP ("": the model itself)
    images: Optional[int] = None  # seeded subset; None = the dataset's `dissect_images` (registry), else every image
    top_k: int = Field(default=TOP_K, ge=1)  # a neuron's most activating images: soft-WPMI's examples and its vector (CLIP-Dissect: 100)
    batch_size: int = Field(default=64, ge=1)
    seed: int = Field(default=0, ge=0)


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("dataset_manifest"), MODEL_CHECKPOINT], group_name="evaluation",
       kinds={"parquet", "lancedb"}, pool="gpu")
def neuron_concepts(context: AssetExecutionContext, config: DissectConfig, datasets: DatasetCatalog, zoo: ModelZoo,
                    store: ArtifactStore, lance: LanceStore, reference: ReferenceData) -> MaterializeResult:
    """Best and second-best concept per neuron of one ViT block (soft-WPMI ↑), and a searchable vector per neuron."""
    model, dataset = model_and_dataset(context)
    n = probe_image_count(datasets, dataset, config.images)
    probe_key = config.probe or model
    zoo.spec(probe_key)  # an unknown probe fails before any model is loaded
    m = zoo.load(model)
    layer = check_layer(m, config.layer)
    probe = m if probe_key == model else zoo.load(probe_key)
    source, concepts = concept_set(datasets, reference, dataset)
    view = subset(partition_view(datasets, store, model, dataset), n, config.seed)
    if view.manifest.is_empty():
        raise CliplabError(f"dataset {dataset!r} has no usable probe images")
    progress = Progress(context, len(view.manifest), f"CLIP-Dissect {model} × {dataset}")
    activations, images = probe_pass(datasets, view, m, probe, layer, config.batch_size, progress)
    progress.close()
    rate = progress.rate
    if len(images) <= config.top_k:
        context.log.warning(f"{len(images)} probe images <= top_k = {config.top_k}: every neuron's examples are all of "
                            "them (in its own order) and every neuron gets the same vector")
    probs = concept_probabilities(images.to(probe.device), text_embeddings(probe, concepts))
    table = label_table(layer, soft_wpmi(activations, probs, top_k=config.top_k), concepts)
    path = store.write(TABLE, table, model=model, dataset=dataset)
    n_neurons = table.num_rows
    lance.replace_partition(TABLE, pa.table({
        "model": [model] * n_neurons, "dataset": [dataset] * n_neurons, "probe": [probe_key] * n_neurons,
        **{c: table.column(c) for c in ("layer", "neuron", "concept", "score")},
        "vector": vectors(top_image_vectors(activations, images, config.top_k).numpy())}), model, dataset, key="neuron")
    labels = pl.from_arrow(table)
    figure = plots.histograms(best_scores(store, zoo, model, dataset, layer, labels["score"].to_numpy()),
                              "best soft-WPMI score ↑", f"{dataset}, block {layer}: best concept score per neuron")
    top = labels.sort("score", descending=True).head(10).select("neuron", "concept", "score", "second_concept")
    return MaterializeResult(metadata={
        "dagster/row_count": n_neurons, "layer": layer, "neurons": n_neurons, "images": len(images),
        "concepts": len(concepts), "concept source": source, "probe": probe_key, "top_k": config.top_k,
        "distinct best concepts": labels["concept"].n_unique(), "median best score": float(labels["score"].median()),
        "top neurons": MetadataValue.md(plots.markdown_table(top)), "seed": config.seed, "images/s": round(rate, 2),
        "device": m.device, **table_metadata(path), "lancedb table": f"{lance.uri}/{TABLE}",
        **png_metadata(figure, store.figure_path(TABLE, f"{model}__{dataset}.png"), "best scores"),
    })


def probe_image_count(datasets: DatasetCatalog, dataset: str, images: int | None) -> int | None:
    """`images`, else the registry's `dissect_images` for the dataset, else None (every image)."""
    if images is not None or "dissect_images" not in datasets.spec(dataset).options:
        return positive("images", images)
    return dataset_default(datasets, dataset, "dissect_images", 1)


def check_layer(m: LoadedModel, layer: int) -> int:
    """The block index from 0 of `layer` (negative: from the end) in the model's ViT image tower."""
    if m.family != "vit":
        raise CliplabError(f"neuron_concepts reads the CLS token of a ViT block; {m.key!r} is a {m.family} model: "
                           "dissect a ViT model instead")
    depth = len(m.model.visual.transformer.resblocks)
    if not -depth <= layer < depth:
        raise CliplabError(f"layer {layer} is outside {m.key!r}'s {depth} blocks: use 0 … {depth - 1} or -{depth} … -1")
    return layer % depth


def concept_set(datasets: DatasetCatalog, reference: ReferenceData, dataset: str) -> tuple[str, list[str]]:
    """(source, distinct concept texts in order): toyworld's phrase bank on toyworld, else the published 20k set."""
    if datasets.spec(dataset).kind == "toyworld":
        return "toyworld.phrase_bank", list(dict.fromkeys(p for p, _ in toyworld.phrase_bank()))
    return "concepts_20k (CLIP-Dissect)", list(dict.fromkeys(reference.lines("concepts_20k")))


class TwoInputs:
    """PIL image → (the model's input, the probe's input): one decode feeds both preprocessings."""

    def __init__(self, first, second):
        self.first, self.second = first, second

    def __call__(self, image):
        return self.first(image), self.second(image)


@torch.no_grad()
def probe_pass(datasets: DatasetCatalog, view: DatasetView, m: LoadedModel, probe: LoadedModel, layer: int,
               batch_size: int, progress: Progress) -> tuple[torch.Tensor, torch.Tensor]:
    """(activations (N, width) at CLS of block `layer` of the model, unit image embeddings (N, D) of the probe), CPU."""
    same = probe is m
    preprocess = m.preprocess if same else TwoInputs(m.preprocess, probe.preprocess)
    acts, embs = [], []
    for rows, batch in datasets.image_batches(view, preprocess, batch_size):
        x_model, x_probe = (batch, batch) if same else batch
        acts.append(neuron_activations(m.model.visual, x_model.to(m.device), layer).cpu())
        embs.append(F.normalize(probe.model.encode_image(x_probe.to(probe.device)).float(), dim=-1).cpu())
        progress.update(len(rows))
    return torch.cat(acts), torch.cat(embs)


def label_table(layer: int, scores: torch.Tensor, concepts: list[str]) -> pa.Table:
    """Per neuron of soft-WPMI scores (M, C): its best concept and the runner-up with their scores (SCHEMA)."""
    best, index = label_neurons(scores)
    second, second_index = label_neurons(scores.scatter(1, index[:, None], float("-inf")))
    names = np.asarray(concepts, dtype=object)
    return pa.table({"layer": [layer] * len(best), "neuron": range(len(best)),
                     "concept": names[index.cpu().numpy()].tolist(), "score": best.cpu().double().numpy(),
                     "second_concept": names[second_index.cpu().numpy()].tolist(),
                     "second_score": second.cpu().double().numpy()}, schema=SCHEMA)


@torch.no_grad()
def text_embeddings(probe: LoadedModel, texts: list[str]) -> torch.Tensor:
    """(C, D) unit embeddings of bare texts by the probe, on its device: the concepts, or a `search_neurons` query."""
    out = [probe.model.encode_text(probe.tokenizer(texts[s: s + TEXT_BATCH]).to(probe.device)).float()
           for s in range(0, len(texts), TEXT_BATCH)]
    return F.normalize(torch.cat(out), dim=-1)


def top_image_vectors(activations: torch.Tensor, image_embeddings: torch.Tensor, top_k: int) -> torch.Tensor:
    """(M, D): per neuron, the unit mean of the image embeddings (N, D) of its top-k images by activations (N, M)."""
    top = activations.topk(min(top_k, len(activations)), dim=0).indices  # (k, M)
    return F.normalize(image_embeddings[top].mean(0), dim=-1)


def best_scores(store: ArtifactStore, zoo: ModelZoo, model: str, dataset: str, layer: int, scores: np.ndarray) -> dict:
    """This model's best scores, and those of its base / AFT models at the same block where stored (w/o vs w/ AFT)."""
    out = {model: scores}
    for other in related_models(zoo, model):
        if store.exists(TABLE, model=other, dataset=dataset):
            theirs = store.read(TABLE, model=other, dataset=dataset).filter(pl.col("layer") == layer).collect()
            if len(theirs):
                out[other] = theirs["score"].to_numpy()
    return out


def search_neurons(lance: LanceStore, model: str, dataset: str, text_vector, k: int = 10) -> pl.DataFrame:
    """The k neurons of (model, dataset) nearest to a text embedding (D,) made by the partition's probe (metric dot on
    unit vectors): rank, layer, neuron, concept, score (the neuron's soft-WPMI), similarity (cosine ↑)."""
    query = np.asarray(text_vector, dtype=np.float32).ravel()
    query = query / np.linalg.norm(query)
    hits = (lance.table(TABLE, model=model).search(query).distance_type("dot")
            .where(f"model = {_sql_str(model)} AND dataset = {_sql_str(dataset)}", prefilter=True)
            .select(["layer", "neuron", "concept", "score", "_distance"]).limit(k).to_polars())
    return pl.DataFrame({"rank": np.arange(1, len(hits) + 1, dtype=np.int64), "layer": hits["layer"],
                         "neuron": hits["neuron"], "concept": hits["concept"], "score": hits["score"],
                         "similarity": (1.0 - hits["_distance"].cast(pl.Float64)).to_numpy()})
