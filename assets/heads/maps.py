"""The five CLIP-InterpreT analyses run against a materialised (model, dataset) partition.

Token-summed head contributions come from LanceDB (`head_contributions`, via `resources.head_index`);
per-token contributions, which the maps need, are computed on demand for the image at hand with the
exact decomposition (`cliplab.heads.decomposition`, CLS query row only): an arbitrary input image has no
stored tokens anyway, and storing (N, d) per head per image would cost N times the token-summed
table (197 × for ViT-B/16) for maps that one forward pass (milliseconds to a second) recomputes.
Images are shown as the model saw them (its resize and centre crop), so maps and pixels line up.

`HeadAnalyses` is what `cliplab heads ...` calls; the maths is in `cliplab.heads.maps` and
`cliplab.heads.neighbours`.
"""

from dataclasses import dataclass

import numpy as np
import polars as pl
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)

from assets._report import png_metadata
from assets.data import partition_view
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab.errors import CliplabError
from resources.datasets import DatasetCatalog
from resources.head_index import HeadIndex
from resources.images import decode_image
from resources.lance import LanceStore
from resources.models import LoadedModel, ModelZoo
from resources.store import ArtifactStore


@dataclass
class InputImage:
    """pixels: (1, 3, H, W) preprocessed; view: (H, W, 3) uint8, what the model saw; image_id when stored."""

    pixels: object
    view: np.ndarray
    image_id: str | None
    name: str


def model_view(pixels, mean, std) -> np.ndarray:
    """Preprocessed (3, H, W) tensor → (H, W, 3) uint8: the normalisation undone."""
    x = pixels.detach().cpu().float().numpy().transpose(1, 2, 0) * np.asarray(std) + np.asarray(mean)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _preferred_bank(banks: list[str]) -> str | None:
    """toyworld's own phrase bank when present, else TextSpan's general descriptions, else the first."""
    for bank in ("toyworld_phrases", "image_descriptions_general"):
        if bank in banks:
            return bank
    return min(banks) if banks else None


class HeadAnalyses:
    """Analyses of one (model, dataset) partition: images by path or stored image_id, texts by string."""

    def __init__(self, zoo: ModelZoo, datasets: DatasetCatalog, lance: LanceStore, store: ArtifactStore,
                 model: str, dataset: str):
        self.zoo, self.datasets, self.store = zoo, datasets, store
        self.model_key, self.dataset = model, dataset
        self.index = HeadIndex(lance, model, dataset)
        self._m: LoadedModel | None = None
        self._manifest: pl.DataFrame | None = None

    # ---- inputs -------------------------------------------------------------------------------------------
    @property
    def m(self) -> LoadedModel:
        if self._m is None:
            self._m = self.zoo.load(self.model_key)
            if self._m.family != "vit":
                raise CliplabError(f"model {self.model_key!r} is a ResNet CLIP: it has no attention heads to analyse")
        return self._m

    @property
    def shape(self) -> tuple[int, int]:
        """(layers, heads per layer) of the model's image tower."""
        blocks = self.m.model.visual.transformer.resblocks
        return len(blocks), blocks[0].attn.num_heads

    def check_head(self, layer: int, head: int) -> None:
        n_layers, n_heads = self.shape
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise CliplabError(f"layer {layer} head {head} does not exist in {self.model_key}: "
                               f"layers 0..{n_layers - 1}, heads 0..{n_heads - 1}")

    def manifest(self) -> pl.DataFrame:
        if self._manifest is None:
            stored = self.store.exists("dataset_manifest", model=self.model_key, dataset=self.dataset)
            # without the partition's manifest the head tables are missing too: they say so, with the job to run
            self._manifest = (partition_view(self.datasets, self.store, self.model_key, self.dataset) if stored
                              else self.datasets.open(self.dataset)).manifest
        return self._manifest

    def stored_pil(self, ids: list[str]) -> list:
        """PIL images of stored image ids, in order; an error naming ids the dataset does not have."""
        rows = self.manifest().filter(pl.col("image_id").is_in(ids))
        missing = [i for i in ids if i not in set(rows["image_id"].to_list())]
        if missing:
            example = self.manifest()["image_id"][0] if len(self.manifest()) else "none"
            raise CliplabError(f"image_id {missing[0]!r} is not in dataset {self.dataset!r} "
                               f"({len(self.manifest())} images, e.g. {example!r})")
        by_id = {r["image_id"]: r for r in rows.to_dicts()}
        if self.datasets.spec(self.dataset).kind == "toyworld":
            import pyarrow.parquet as pq

            split = self.datasets.spec(self.dataset).split or "val"
            table = pq.read_table(self.datasets.toyworld_path(split), columns=["image_id", "image_png"],
                                  filters=[("image_id", "in", ids)])
            png = dict(zip(table["image_id"].to_pylist(), table["image_png"].to_pylist()))
            return [decode_image(png[i]) for i in ids]
        return [decode_image(by_id[i]["path"]) for i in ids]

    def views(self, ids: list[str]) -> np.ndarray:
        """(k, H, W, 3) uint8: stored images as the model sees them."""
        return np.stack([model_view(self.m.preprocess(p), self.m.mean, self.m.std) for p in self.stored_pil(ids)])

    def image(self, path: str | None = None, image_id: str | None = None) -> InputImage:
        """The input image: a file (any format PIL reads) or a stored image of the dataset, preprocessed."""
        if (path is None) == (image_id is None):
            raise CliplabError("give exactly one of an image path or an image_id")
        if path is not None:
            from pathlib import Path

            if not Path(path).is_file():
                raise CliplabError(f"image file {path} does not exist")
            pil, name = decode_image(path), Path(path).name
        else:
            pil, name = self.stored_pil([image_id])[0], image_id
        pixels = self.m.preprocess(pil)
        return InputImage(pixels[None], model_view(pixels, self.m.mean, self.m.std), image_id, name)

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """(T, d) unit text embeddings, no template (as `text_bank_embeddings`)."""
        import torch

        from cliplab.zeroshot import class_embeddings

        if not texts or any(not t.strip() for t in texts):
            raise CliplabError("texts must be non-empty strings")
        with torch.inference_mode():
            return class_embeddings(lambda t: self.m.model.encode_text(t.to(self.m.device)), self.m.tokenizer,
                                    list(texts), ["{}"]).cpu().numpy()

    def contributions(self, image: InputImage, pairs: list[tuple[int, int]], per_token: bool) -> np.ndarray:
        """(P, N, d) per-token or (P, d) token-summed contributions of the heads `pairs` for the image."""
        import torch

        from cliplab.heads.decomposition import decompose_image

        for layer, head in pairs:
            self.check_head(layer, head)
        n_layers, _ = self.shape
        first = min(layer for layer, _ in pairs)
        dec = decompose_image(self.m.model, image.pixels.to(self.m.device, torch.float32),
                              layers=n_layers - first, per_token=per_token)
        parts = dec.heads_per_token if per_token else dec.heads
        slot = {layer: i for i, layer in enumerate(dec.layers)}
        return np.stack([parts[0, slot[layer], head].cpu().numpy() for layer, head in pairs])

    def default_heads(self) -> list[tuple[int, int]]:
        n_layers, n_heads = self.shape
        return [(layer, h) for layer in range(max(0, n_layers - 4), n_layers) for h in range(n_heads)]

    def span_texts(self, layer: int, head: int, n: int = 5) -> list[str]:
        """The head's top-n TextSpan texts from `head_spans` (toyworld's phrase bank when present)."""
        if not self.store.exists("head_spans", model=self.model_key, dataset=self.dataset):
            raise CliplabError(f"no texts given and head_spans is not materialised for model={self.model_key} "
                               f"dataset={self.dataset}: pass --text (one or more)")
        spans = self.store.read("head_spans", model=self.model_key, dataset=self.dataset).filter(
            (pl.col("layer") == layer) & (pl.col("head") == head)).collect()
        bank = _preferred_bank(spans["bank"].unique().to_list())
        texts = spans.filter(pl.col("bank") == bank).sort("rank")["text"].head(n).to_list()
        if not texts:
            raise CliplabError(f"head_spans has no texts for layer {layer} head {head}: pass --text")
        return texts

    # ---- the five analyses -----------------------------------------------------------------------------------
    def property_neighbours(self, image: InputImage, prop: str | None = None,
                            heads: list[tuple[int, int]] | None = None, k: int = 4) -> tuple[pl.DataFrame, bytes]:
        """Analysis 1: cos of the mean contribution of the property's heads vs every stored image's; top-k."""
        from cliplab.heads.neighbours import neighbour_grid, property_neighbours

        heads = heads or self.property_heads(prop)
        ids, refs = self.index.vectors(heads)
        if image.image_id is not None and image.image_id in ids:
            query = refs[ids.index(image.image_id)]
            keep = [i for i, x in enumerate(ids) if x != image.image_id]
            ids, refs = [ids[i] for i in keep], refs[keep]
        else:
            query = self.contributions(image, heads, per_token=False)
        frame = property_neighbours(query, refs, ids, k)
        label = prop or ",".join(f"{l}.{h}" for l, h in heads)
        png = neighbour_grid(image.view, self.views(frame["image_id"].to_list()), frame, "cosine",
                             f"{image.name}\nheads: {label}")
        return frame.with_columns(pl.lit(label).alias("property"), pl.lit(len(heads)).alias("heads")), png

    def property_heads(self, prop: str | None) -> list[tuple[int, int]]:
        from cliplab.heads.scores import normalise_label

        if not prop:
            raise CliplabError("give a property (as labelled in head_labels) or explicit heads")
        if not self.store.exists("head_labels", model=self.model_key, dataset=self.dataset):
            raise CliplabError(f"head_labels is not materialised for model={self.model_key} dataset={self.dataset}: "
                               "materialise it or pass explicit heads (--heads 11.3,10.0)")
        labels = self.store.read("head_labels", model=self.model_key, dataset=self.dataset).collect()
        if "bank" in labels.columns:  # one label per head and bank: the dataset's own bank when it has one
            labels = labels.filter(pl.col("bank") == _preferred_bank(labels["bank"].unique().to_list()))
        wanted = normalise_label(prop)
        hits = labels.filter(pl.col("label").map_elements(normalise_label, return_dtype=pl.String) == wanted)
        if hits.is_empty():
            known = sorted(set(labels["label"].to_list()))
            raise CliplabError(f"no head is labelled {prop!r} for model={self.model_key} dataset={self.dataset}; "
                               f"labels: {', '.join(known)}")
        return [(int(l), int(h)) for l, h in hits.select("layer", "head").sort("layer", "head").iter_rows()]

    def topic_segmentation(self, image: InputImage, layer: int, head: int,
                           texts: list[str] | None = None) -> tuple[pl.DataFrame, bytes]:
        """Analysis 2: one head's per-patch contribution · each text, mean over texts subtracted, over the image."""
        from cliplab.heads.maps import heat_overlay, topic_segmentation

        self.check_head(layer, head)
        texts = texts or self.span_texts(layer, head)
        tokens = self.contributions(image, [(layer, head)], per_token=True)[0]
        visual = self.m.model.visual
        maps = topic_segmentation(tokens, self.encode_texts(texts), texts, tuple(visual.grid_size),
                                  tuple(visual.patch_size))
        note = " (mean over texts subtracted)" if len(texts) > 1 else ""
        png = heat_overlay(image.view, maps.maps, texts, f"{self.model_key} L{layer}.H{head} · {image.name}{note}")
        return maps.frame.with_columns(pl.lit(layer).alias("layer"), pl.lit(head).alias("head")), png

    def contrastive_segmentation(self, image: InputImage, text_a: str, text_b: str,
                                 heads: list[tuple[int, int]] | None = None) -> tuple[pl.DataFrame, bytes]:
        """Analysis 3: Σ over heads of (map of text a − map of text b); default heads: all of the last 4 layers."""
        from cliplab.heads.maps import contrastive_segmentation, heat_overlay

        heads = heads or self.default_heads()
        tokens = self.contributions(image, heads, per_token=True)
        a, b = self.encode_texts([text_a, text_b])
        visual = self.m.model.visual
        maps = contrastive_segmentation(tokens, a, b, (text_a, text_b), tuple(visual.grid_size), tuple(visual.patch_size))
        png = heat_overlay(image.view, maps.maps, [f"{text_a} (red) vs {text_b} (blue)"],
                           f"{self.model_key}, {len(heads)} heads · {image.name}")
        return maps.frame.with_columns(pl.lit(len(heads)).alias("heads")), png

    def image_neighbours(self, image: InputImage, layer: int, head: int, k: int = 8) -> tuple[pl.DataFrame, bytes]:
        """Analysis 4: stored images by c_{l,h}(x) · c_{l,h}(y) (LanceDB dot search), the query image excluded."""
        from cliplab.heads.neighbours import neighbour_grid

        self.check_head(layer, head)
        query = self.index.vector(image.image_id, layer, head) if image.image_id else None
        if query is None:
            query = self.contributions(image, [(layer, head)], per_token=False)[0]
        frame = self.index.search(query, layer, head, k, exclude=image.image_id)
        png = neighbour_grid(image.view, self.views(frame["image_id"].to_list()), frame, "score",
                             f"{image.name}\nL{layer}.H{head}")
        return frame.with_columns(pl.lit(layer).alias("layer"), pl.lit(head).alias("head")), png

    def text_neighbours(self, text: str, layer: int, head: int, k: int = 8) -> tuple[pl.DataFrame, bytes]:
        """Analysis 5: stored images by t · c_{l,h}(y) (LanceDB dot search)."""
        from cliplab.heads.neighbours import neighbour_grid

        self.check_head(layer, head)
        self.index.check_head(layer, head)
        query = self.encode_texts([text])[0]
        frame = self.index.search(query, layer, head, k)
        png = neighbour_grid(None, self.views(frame["image_id"].to_list()), frame, "score",
                             f"text: {text}\nL{layer}.H{head}")
        return frame.with_columns(pl.lit(text).alias("text"), pl.lit(layer).alias("layer"), pl.lit(head).alias("head")), png


class HeadAnalysisConfig(Config):
    image_id: str = ""  # the image the maps and neighbours are computed for; "" = the dataset's first image
    text: str = ""  # the text-neighbour query; "" = the top TextSpan text of the chosen head
    contrast_a: str = ""  # the contrastive map's two texts; "" = the chosen head's top two texts
    contrast_b: str = ""


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("head_contributions"), AssetKey("head_spans"), AssetKey("head_labels"), MODEL_CHECKPOINT],
       group_name="head_spans", kinds={"parquet"})
def head_analysis_examples(context: AssetExecutionContext, config: HeadAnalysisConfig, zoo: ModelZoo,
                           datasets: DatasetCatalog, lance: LanceStore, store: ArtifactStore) -> MaterializeResult:
    """The five CLIP-InterpreT analyses on one image, for the head with the strongest first TextSpan text: tables + pictures."""
    model, dataset = model_and_dataset(context)
    run = HeadAnalyses(zoo, datasets, lance, store, model, dataset)
    spans = store.read("head_spans", model=model, dataset=dataset).filter(pl.col("rank") == 0).collect()
    spans = spans.filter(pl.col("bank") == _preferred_bank(spans["bank"].unique().to_list()))
    layer, head = spans.sort("score", descending=True).select("layer", "head").row(0)
    image = run.image(image_id=config.image_id or run.manifest()["image_id"][0])
    texts = run.span_texts(layer, head)
    text_a, text_b = config.contrast_a or texts[0], config.contrast_b or (texts + texts)[1]
    labels = store.read("head_labels", model=model, dataset=dataset).filter(
        (pl.col("layer") == layer) & (pl.col("head") == head)).collect()
    labels = labels.filter(pl.col("bank") == _preferred_bank(labels["bank"].unique().to_list()))["label"]
    results = {
        "property_neighbours": run.property_neighbours(image, labels[0]) if len(labels) else None,
        "topic_segmentation": run.topic_segmentation(image, layer, head, texts),
        "contrastive_segmentation": run.contrastive_segmentation(image, text_a, text_b),
        "image_neighbours": run.image_neighbours(image, layer, head),
        "text_neighbours": run.text_neighbours(config.text or texts[0], layer, head),
    }
    meta = {"image": image.name, "head": f"L{layer}.H{head}", "texts": MetadataValue.json(texts)}
    for name, result in results.items():
        if result is None:
            continue
        frame, png = result
        store.write(f"head_{name}", frame, model=model, dataset=dataset)
        meta[f"{name} rows"] = len(frame)
        meta |= png_metadata(png, store.figure_path("head_analysis_examples", model, dataset, f"{name}.png"), name)
    context.log.info(f"head analyses of {image.name} with L{layer}.H{head}: {', '.join(r for r in results if results[r])}")
    return MaterializeResult(metadata=meta)
