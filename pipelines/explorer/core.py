"""What the explorer's panels compute: thin calls into the functions `cliplab heads ...` and the assets use.

`Explorer` holds the resources (from CLIPLAB_* like every other command), the uploaded images (decoded once,
bounded, keyed by their sha256) and a small cache of computed panels. A panel is a `Panel`: the asset partitions it
read with when they were written, pictures (PNG bytes), tables (polars) and notes; or an error message (a
`CliplabError`'s text, which names what to materialise). The head panels call `assets.heads.maps.HeadAnalyses`,
what the CLI calls, so the numbers are the CLI's by construction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cliplab.errors import CliplabError

PANELS = {
    "concepts": "Mutual knowledge: visual concepts",
    "heads": "Head labels and TextSpan texts",
    "property": "Property-based nearest neighbours",
    "segment": "Topic segmentation",
    "contrast": "Contrastive segmentation",
    "image-nn": "Image nearest neighbours (one head)",
    "text-nn": "Text nearest neighbours (one head)",
    "saliency": "Saliency (base and AFT side by side)",
}
UPLOAD_PREFIX = "upload:"
MAX_UPLOAD_BYTES = 40 * 1024 * 1024
MAX_UPLOADS = 64
MAX_RESULTS = 256


@dataclass
class Panel:
    title: str
    sources: list[tuple[str, str, str | None]] = field(default_factory=list)  # (asset, partition, written at)
    pictures: list[tuple[str, bytes]] = field(default_factory=list)
    tables: list[tuple[str, pl.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


def _when(path: str | os.PathLike) -> str | None:
    try:
        return dt.datetime.fromtimestamp(os.stat(path).st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OSError:
        return None


class Explorer:
    def __init__(self, root: str | None = None, registry: str | None = None):
        from pipelines.definitions import resources_from_env

        self.res = resources_from_env(root, registry)
        self.store, self.lance = self.res["store"], self.res["lance"]
        self.zoo, self.datasets = self.res["zoo"], self.res["datasets"]
        self.root = Path(self.store.uri())
        self.lock = threading.RLock()  # one analysis at a time: models and their caches are shared
        self._analyses: dict[tuple[str, str], object] = {}
        self._models: dict[str, object] = {}
        self._uploads: OrderedDict[str, tuple[object, str]] = OrderedDict()
        self._results: OrderedDict[tuple, Panel] = OrderedDict()
        self._memo: dict[tuple, object] = {}
        self._thumbs: OrderedDict[tuple, bytes] = OrderedDict()

    # ---- what is there ---------------------------------------------------------------------------------------
    def partitions(self) -> list[tuple[str, str]]:
        """(model, dataset) pairs with a materialised `dataset_manifest`, sorted."""
        base = self.root / "dataset_manifest"
        pairs = []
        for part in base.glob("model=*/dataset=*/part-0.parquet"):
            pairs.append((part.parent.parent.name.split("=", 1)[1], part.parent.name.split("=", 1)[1]))
        return sorted(pairs)

    def model_keys(self) -> list[str]:
        return sorted(set(self.zoo.known_keys()) | {m for m, _ in self.partitions()})

    def dataset_keys(self) -> list[str]:
        return sorted(set(self.datasets.known_keys()) | {d for _, d in self.partitions()})

    def written(self, asset: str, model: str, dataset: str) -> tuple[str, str, str | None]:
        """(asset, partition, when its Parquet file was written); LanceDB tables: their latest version's time."""
        part = f"{dataset}|{model}"
        if asset == "checkpoint":
            return asset, model, _when(self.zoo.checkpoint_dir(model) / "open_clip_model.safetensors")
        if asset in ("head_contributions", "text_bank_embeddings", "descriptor_embeddings"):
            when = None
            for folder in sorted(Path(self.lance.uri).glob(f"{asset}*.lance")):
                versions = sorted((folder / "_versions").glob("*"), key=lambda p: p.stat().st_mtime)
                when = _when(versions[-1]) if versions else _when(folder)
            return asset, part, when
        return asset, part, _when(self.store.table_path(asset, model=model, dataset=dataset))

    def require(self, asset: str, model: str, dataset: str, job: str) -> None:
        if not self.store.exists(asset, model=model, dataset=dataset):
            raise CliplabError(
                f"{asset} is not materialised for model={model} dataset={dataset}: materialise the `{job}` job for "
                f"partition {dataset}|{model} (`cliplab run --model {model} --dataset {dataset}`, or in `cliplab ui`)")

    def analyses(self, model: str, dataset: str):
        """The `HeadAnalyses` of a partition (what `cliplab heads` uses), kept with its loaded model."""
        from assets.heads.maps import HeadAnalyses
        from resources.registry import validate_key

        validate_key(model, "model key"), validate_key(dataset, "dataset key")
        key = (model, dataset)
        if key not in self._analyses:
            self.zoo.spec(model), self.datasets.spec(dataset)  # unknown keys: the registry's error
            self.require("dataset_manifest", model, dataset, "main")
            self._analyses[key] = HeadAnalyses(self.zoo, self.datasets, self.lance, self.store, model, dataset)
        return self._analyses[key]

    def memo(self, asset: str, model: str, dataset: str, what: str, compute):
        """compute() once per version of the asset's partition file (its mtime): per-partition summaries."""
        key = (asset, model, dataset, what, self.written(asset, model, dataset)[2])
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def head_analyses(self, model: str, dataset: str):
        """`analyses`, for the head panels: a ResNet model is refused here, before anything is computed."""
        from resources.registry import validate_key

        validate_key(model, "model key")
        # before the partition check: materialising a ResNet's partition would not give it heads
        if self.model(model).family != "vit":
            raise CliplabError(f"model {model!r} is a ResNet CLIP: it has no attention heads to analyse "
                               "(the mutual-knowledge and saliency panels work for it)")
        return self.analyses(model, dataset)

    def model(self, key: str):
        """The loaded model of `key` (ViT or ResNet), kept for the session (the zoo keeps one at a time)."""
        if key not in self._models:
            self.zoo.check_ready(key)
            self._models[key] = self.zoo.load(key)
        return self._models[key]

    def pixel_model(self, key: str, dataset: str):
        """`assets.evaluation._common.pixel_model` built on this session's loaded model (the zoo keeps only one:
        base and AFT side by side would reload weights on every request)."""
        from assets.data import read_class_weights
        from assets.evaluation._common import PixelModel
        from cliplab.pixels import PixelEncoder, split_preprocess

        m = self.model(key)

        def build():
            to_pixels, mean, std = split_preprocess(m.preprocess)
            encoder = PixelEncoder(m.model.visual, mean, std).to(m.device).eval()
            weights = read_class_weights(self.store, key, dataset).to(m.device)
            return PixelModel(key, encoder, weights, to_pixels, m.device, m.family, m.image_size, mean, std)

        return self.memo("class_text_embeddings", key, dataset, "pixel model", build)

    def images(self, model: str, dataset: str, query: str = "", offset: int = 0, limit: int = 48) -> tuple[pl.DataFrame, int]:
        """Stored images of the partition's manifest whose id or class contains `query`: (page, total)."""
        man = self.analyses(model, dataset).manifest()
        if query:
            q = query.lower()
            man = man.filter(pl.col("image_id").str.to_lowercase().str.contains(q, literal=True)
                             | pl.col("class_name").str.to_lowercase().str.contains(q, literal=True))
        return man.select("image_id", "label", "class_name").slice(offset, limit), len(man)

    def thumbnails(self, model: str, dataset: str, ids: list[str], size: int = 96) -> dict[str, bytes]:
        import io

        missing = [i for i in ids if (dataset, i, size) not in self._thumbs]
        for image_id, pil in zip(missing, self.analyses(model, dataset).stored_pil(missing) if missing else []):
            pil = pil.copy()
            pil.thumbnail((size, size))
            buf = io.BytesIO()
            pil.save(buf, format="PNG")
            self._thumbs[(dataset, image_id, size)] = buf.getvalue()
        while len(self._thumbs) > 4096:
            self._thumbs.popitem(last=False)
        return {i: self._thumbs[(dataset, i, size)] for i in ids}

    # ---- uploads ----------------------------------------------------------------------------------------------
    def add_upload(self, data: bytes, name: str) -> str:
        """Decode (bounded) and keep an uploaded image; its reference `upload:<sha256[:16]>`."""
        from resources.images import decode_image

        if not data:
            raise CliplabError("the upload is empty: choose an image file")
        if len(data) > MAX_UPLOAD_BYTES:
            raise CliplabError(f"the upload is {len(data) / 2**20:.0f} MiB; at most {MAX_UPLOAD_BYTES // 2**20} MiB")
        digest = hashlib.sha256(data).hexdigest()[:16]
        with self.lock:
            if digest not in self._uploads:
                try:
                    pil = decode_image(data)
                except CliplabError:
                    raise CliplabError(f"{name or 'the upload'} is not an image this server can read "
                                       "(PNG, JPEG, GIF, BMP, TIFF, WebP, ...)") from None
                self._uploads[digest] = (pil, name or digest)
                while len(self._uploads) > MAX_UPLOADS:
                    self._uploads.popitem(last=False)
            self._uploads.move_to_end(digest)
        return UPLOAD_PREFIX + digest

    def upload_name(self, ref: str) -> str | None:
        got = self._uploads.get(ref[len(UPLOAD_PREFIX):]) if ref.startswith(UPLOAD_PREFIX) else None
        return got[1] if got else None

    def input_image(self, model: str, dataset: str, ref: str):
        """The `InputImage` of a stored image_id or an upload, preprocessed by `model` (as HeadAnalyses.image)."""
        from assets.heads.maps import InputImage, model_view

        if not ref:
            raise CliplabError("pick an image: a stored one, an upload, or a neighbour")
        m = self.model(model)
        if ref.startswith(UPLOAD_PREFIX):
            got = self._uploads.get(ref[len(UPLOAD_PREFIX):])
            if got is None:
                raise CliplabError("this upload is no longer in the server's memory (restarted?): upload it again")
            pil, name, image_id = got[0], got[1], None
        else:
            pil, name, image_id = self.analyses(model, dataset).stored_pil([ref])[0], ref, ref
        pixels = m.preprocess(pil)
        return InputImage(pixels[None], model_view(pixels, m.mean, m.std), image_id, name)

    # ---- panels -----------------------------------------------------------------------------------------------
    def panel(self, name: str, model: str, dataset: str, image: str = "", **params) -> Panel:
        """Panel `name` for the partition and image; errors are the panel's message, never an exception."""
        import time

        key = (name, model, dataset, image, tuple(sorted((k, str(v)) for k, v in params.items())))
        with self.lock:
            if key in self._results:
                self._results.move_to_end(key)
                return self._results[key]
            t0 = time.perf_counter()
            panel = Panel(PANELS.get(name, name))
            try:
                if name not in PANELS:
                    raise CliplabError(f"unknown panel {name!r}; one of {', '.join(PANELS)}")
                getattr(self, "_" + name.replace("-", "_"))(panel, model, dataset, image, **params)
            except CliplabError as e:
                panel.error = str(e)
            except Exception as e:  # a bug or a library error: said on the page (and logged), the server lives on
                logging.getLogger("cliplab.explorer").exception("panel %s of %s × %s failed", name, model, dataset)
                panel.error = f"{type(e).__name__}: {e}"
            panel.seconds = time.perf_counter() - t0
            if panel.error is None:
                self._results[key] = panel
                while len(self._results) > MAX_RESULTS:
                    self._results.popitem(last=False)
            return panel

    def _heads(self, p: Panel, model, dataset, image, **_):
        from assets.heads.maps import _preferred_bank

        self.head_analyses(model, dataset)  # a ResNet has no heads: said here
        self.require("head_spans", model, dataset, "heads")
        spans = self.store.read("head_spans", model=model, dataset=dataset).collect()
        bank = _preferred_bank(spans["bank"].unique().to_list())
        texts = (spans.filter((pl.col("bank") == bank) & (pl.col("rank") < 5)).sort("layer", "head", "rank")
                 .group_by("layer", "head", maintain_order=True).agg(pl.col("text").str.join(" | ").alias("top-5 TextSpan texts")))
        table = texts
        p.sources.append(self.written("head_spans", model, dataset))
        if self.store.exists("head_labels", model=model, dataset=dataset):
            labels = self.store.read("head_labels", model=model, dataset=dataset).collect()
            labels = labels.filter(pl.col("bank") == bank) if "bank" in labels.columns else labels
            table = table.join(labels.select("layer", "head", "label", "n_matches"), on=["layer", "head"], how="left")
            p.sources.append(self.written("head_labels", model, dataset))
        p.tables.append((f"per layer × head (bank {bank})", table.sort("layer", "head")))
        if self.store.exists("head_scores", model=model, dataset=dataset):
            scores = self.store.read("head_scores", model=model, dataset=dataset).collect()
            p.tables.append(("association and entanglement (head_scores)", scores))
            p.sources.append(self.written("head_scores", model, dataset))

    def _property(self, p: Panel, model, dataset, image, prop: str = "", k: int = 4, **_):
        an = self.head_analyses(model, dataset)
        img = self.input_image(model, dataset, image)
        if not prop:
            prop = self.properties(model, dataset)[0]
        frame, png = an.property_neighbours(img, prop, None, int(k))
        p.sources += [self.written("head_labels", model, dataset), self.written("head_contributions", model, dataset)]
        p.pictures.append((f"property {prop!r}", png))
        p.tables.append(("neighbours (cosine of the mean contribution of the property's heads)", frame))

    def properties(self, model: str, dataset: str) -> list[str]:
        from assets.heads.maps import _preferred_bank

        self.require("head_labels", model, dataset, "heads")
        labels = self.store.read("head_labels", model=model, dataset=dataset).collect()
        if "bank" in labels.columns:
            labels = labels.filter(pl.col("bank") == _preferred_bank(labels["bank"].unique().to_list()))
        return sorted(set(labels["label"].to_list()))

    def _segment(self, p: Panel, model, dataset, image, layer: int = -1, head: int = 0, texts: str = "", **_):
        an = self.head_analyses(model, dataset)
        layer = self._layer(an, layer)
        img = self.input_image(model, dataset, image)
        chosen = [t.strip() for t in texts.split("\n") if t.strip()] or None
        frame, png = an.topic_segmentation(img, layer, int(head), chosen)
        if chosen is None:
            p.sources.append(self.written("head_spans", model, dataset))
            p.notes.append("texts: the head's top-5 TextSpan texts (head_spans)")
        p.sources.append(self.written("checkpoint", model, dataset))
        p.pictures.append((f"L{layer}.H{head}", png))
        p.tables.append(("per text", frame))

    def _contrast(self, p: Panel, model, dataset, image, text_a: str = "", text_b: str = "", heads: str = "", **_):
        from cliplab.heads.neighbours import parse_heads

        an = self.head_analyses(model, dataset)
        img = self.input_image(model, dataset, image)
        if not text_a.strip() or not text_b.strip():
            raise CliplabError("contrastive segmentation needs two texts (text a and text b)")
        frame, png = an.contrastive_segmentation(img, text_a.strip(), text_b.strip(),
                                                 parse_heads(heads) if heads.strip() else None)
        p.sources.append(self.written("checkpoint", model, dataset))
        p.pictures.append((f"{text_a} (red) vs {text_b} (blue)", png))
        p.tables.append(("map statistics", frame))

    def _image_nn(self, p: Panel, model, dataset, image, layer: int = -1, head: int = 0, k: int = 8, **_):
        an = self.head_analyses(model, dataset)
        layer = self._layer(an, layer)
        frame, png = an.image_neighbours(self.input_image(model, dataset, image), layer, int(head), int(k))
        p.sources.append(self.written("head_contributions", model, dataset))
        p.pictures.append((f"L{layer}.H{head}", png))
        p.tables.append(("neighbours (dot product of c_{l,h})", frame))

    def _text_nn(self, p: Panel, model, dataset, image, layer: int = -1, head: int = 0, k: int = 8, text: str = "", **_):
        an = self.head_analyses(model, dataset)
        layer = self._layer(an, layer)
        if not text.strip():
            text = an.span_texts(layer, int(head), 1)[0]
            p.notes.append(f"text: the head's top TextSpan text {text!r}")
        frame, png = an.text_neighbours(text.strip(), layer, int(head), int(k))
        p.sources.append(self.written("head_contributions", model, dataset))
        p.pictures.append((f"{text} · L{layer}.H{head}", png))
        p.tables.append(("neighbours (t · c_{l,h})", frame))

    @staticmethod
    def _layer(an, layer) -> int:
        layer = int(layer)
        return an.shape[0] - 1 if layer < 0 else layer

    # ---- mutual knowledge ---------------------------------------------------------------------------------------
    def _concepts(self, p: Panel, model, dataset, image, **_):
        import pyarrow.parquet as pq

        from assets.mutual.knowledge import read_descriptor_bank
        from cliplab import plots
        from cliplab.mutual.information import average_curves
        from pipelines.explorer.concepts import describe_concepts, image_concepts, mi_of

        for asset in ("visual_concept_descriptors", "concept_clusters", "mi_curves", "class_descriptors"):
            self.require(asset, model, dataset, "mutual_knowledge")
        img = self.input_image(model, dataset, image)
        meta = pq.read_schema(self.store.table_path("concept_clusters", model=model, dataset=dataset)).metadata
        L, seed, facet = int(meta[b"L"]), int(meta[b"seed"]), meta.get(b"facet", b"tokens").decode()
        mi_meta = pq.read_schema(self.store.table_path("mi_curves", model=model, dataset=dataset)).metadata
        u = int(mi_meta.get(b"u", b"50"))
        convention, method = mi_meta.get(b"convention", b"reference").decode(), mi_meta.get(b"auc", b"mean").decode()
        stored = None
        if img.image_id is not None:
            stored = (self.store.read("visual_concept_descriptors", model=model, dataset=dataset)
                      .filter(pl.col("image_id") == img.image_id).sort("branch", "concept").collect())
        p.sources += [self.written(a, model, dataset) for a in ("visual_concept_descriptors", "concept_clusters", "mi_curves", "mi_class_curves")]
        if stored is not None and len(stored):
            from assets.mutual.concepts import patch_grid

            grid = patch_grid(self.store, model, dataset)
            cc = (self.store.read("concept_clusters", model=model, dataset=dataset)
                  .filter(pl.col("image_id") == img.image_id).collect())
            grids = {}
            for branch in ("pca", "kmeans"):
                g = np.full(grid[0] * grid[1], -1, dtype=np.int64)
                g[cc["patch"].to_numpy()] = cc[f"{branch}_concept"].to_numpy()
                grids[branch] = g
            rows = stored
            pred = int(stored["pred"][0])
            mi = {r["branch"]: {"curve": np.asarray(r["curve"]), "mi": r["mi"], "auc": r["auc"], "matches": r["matches"]}
                  for r in self.store.read("mi_curves", model=model, dataset=dataset)
                  .filter(pl.col("image_id") == img.image_id).collect().iter_rows(named=True)}
            p.notes.append("stored image: concepts, descriptors and MI as the pipeline stored them")
        else:
            import torch

            from assets.data import read_class_weights

            m = self.model(model)
            prom = pq.read_schema(self.store.table_path("prominent_patches", model=model, dataset=dataset)).metadata
            grids, grid = image_concepts(m, img.pixels, L, seed, prom.get(b"method", b"joint").decode(), facet)
            bank = read_descriptor_bank(self.lance, model, dataset)
            top = int(self.datasets.spec(dataset).options.get("dv_top", 500))
            rows = describe_concepts(m, img.pixels, grids, grid, L, bank, top=top)
            with torch.inference_mode():
                e = torch.nn.functional.normalize(m.model.encode_image(img.pixels.to(m.device, torch.float32)).float(), dim=-1)
                pred = int((e.cpu() @ read_class_weights(self.store, model, dataset).T).argmax())
            d_y = (self.store.read("class_descriptors", model=model, dataset=dataset)
                   .filter((pl.col("class_index") == pred) & (pl.col("rank") < u)).sort("rank").collect())
            mi = mi_of(rows, d_y["descriptor_index"].to_list(), convention, method)
            p.sources += [self.written("descriptor_embeddings", model, dataset), self.written("class_descriptors", model, dataset)]
            p.notes.append(f"computed for this image: its own prominent patches clustered into L = {L} concepts "
                           "(a stored image's concepts are shared over its class), the pipeline's default D_v options")
        names = self.datasets.class_names(dataset)
        p.notes.append(f"zero-shot prediction: {names[pred] if pred < len(names) else pred} (class {pred})")
        if rows.is_empty():
            p.notes.append("no prominent region: the image has no visual concept")
            return
        view = img.view.astype(np.float32) / 255
        png = plots.concept_overlays([view, view], [rows.filter(pl.col("branch") == b) for b in ("pca", "kmeans")],
                                     [grids[b].reshape(grid) for b in ("pca", "kmeans")],
                                     f"{model} · {img.name}: PCA (top), k-means (bottom)")
        p.pictures.append(("visual concepts: coloured patches, ellipses, top descriptors", png))
        p.tables.append(("D_v: descriptors per concept (OT)", rows.select(
            "branch", "concept", "n_patches", "descriptor", "similarity", "importance")))
        # the class's and the dataset's curves beside the image's
        def mean_curves():
            curves = self.store.read("mi_curves", model=model, dataset=dataset).select("branch", "curve").collect()
            return {b: average_curves([np.asarray(c) for c in curves.filter(pl.col("branch") == b)["curve"].to_list()])
                    for b in ("pca", "kmeans")}

        dataset_curves = self.memo("mi_curves", model, dataset, "dataset curves", mean_curves)
        class_curves = {}
        if self.store.exists("mi_class_curves", model=model, dataset=dataset):
            cc = self.store.read("mi_class_curves", model=model, dataset=dataset).filter(pl.col("class_index") == pred).collect()
            class_curves = {r["branch"]: np.asarray(r["curve"]) for r in cc.iter_rows(named=True)}
        from cliplab.mutual.information import auc

        summary = []
        for b in ("pca", "kmeans"):
            if b in mi:
                summary.append({"branch": b, "image MI": float(mi[b]["mi"]), "image AUC": float(mi[b]["auc"]),
                                "matches": int(mi[b]["matches"]),
                                "class AUC": auc(class_curves[b], method) if b in class_curves else None,
                                "dataset AUC": auc(dataset_curves[b], method) if len(dataset_curves[b]) else None})
        p.pictures.append(("MI curves: this image, its predicted class, the dataset", _mi_plot(mi, class_curves, dataset_curves)))
        p.tables.append(("MI and AUC", pl.DataFrame(summary)))


    # ---- saliency -----------------------------------------------------------------------------------------------
    def _saliency(self, p: Panel, model, dataset, image, **_):
        import torch

        from assets.evaluation.saliency import related_models
        from cliplab import plots
        from cliplab.evaluation.saliency import SALIENCY_METHODS

        self.require("class_text_embeddings", model, dataset, "main")
        an = self.analyses(model, dataset)
        ref_img = self.input_image(model, dataset, image)
        pil = (self._uploads[image[len(UPLOAD_PREFIX):]][0] if image.startswith(UPLOAD_PREFIX)
               else an.stored_pil([image])[0])
        keys = [model] + [k for k in related_models(self.zoo, model)
                          if self.zoo.has_checkpoint(k) and self.store.exists("class_text_embeddings", model=k, dataset=dataset)]
        panels, target, shown = {}, None, None
        if not image.startswith(UPLOAD_PREFIX) and self.store.exists("saliency_maps", model=model, dataset=dataset):
            got = (self.store.read("saliency_maps", model=model, dataset=dataset).filter(pl.col("image_id") == image)
                   .select("target").head(1).collect())
            if len(got):  # the class the stored maps explain, so the live maps are the stored ones
                target = int(got["target"][0])
                p.sources.append(self.written("saliency_maps", model, dataset))
        origin = "the stored saliency_maps' target" if target is not None else f"{model}'s zero-shot prediction"
        for key in keys:
            pm = self.pixel_model(key, dataset)
            pixels = pm.to_pixels(pil)[None].to(pm.device)
            if target is None:  # the first model's zero-shot prediction, the same class prompt for every model
                with torch.no_grad():
                    target = int(pm.logits(pixels).argmax())
            if shown is None:
                shown = (pixels[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
            text = pm.text_for(torch.tensor([target]))
            methods = list(SALIENCY_METHODS) if pm.family == "vit" else ["simple_gradient", "grad_cam"]
            for method in methods:
                panels[(key, method)] = SALIENCY_METHODS[method](pm.encoder, pixels, text).float().detach().cpu().numpy()
            p.sources.append(self.written("checkpoint", key, dataset))
            p.sources.append(self.written("class_text_embeddings", key, dataset))
        names = self.datasets.class_names(dataset)
        p.notes.append(f"target: the class prompt of {origin}, {names[target]!r}"
                       + ("" if len(keys) > 1 else "; no base or AFT model of this one has a checkpoint to compare"))
        p.pictures.append((f"{ref_img.name}: " + ", ".join(keys),
                           plots.saliency_grid(shown[None], panels, f"{dataset}: saliency of {names[target]!r}")))
        p.tables.append(("maps", pl.DataFrame([{"model": k, "method": mth, "max": float(v.max()), "mean": float(v.mean())}
                                               for (k, mth), v in panels.items()])))


def _mi_plot(mi: dict, class_curves: dict, dataset_curves: dict) -> bytes:
    from cliplab.plots import _plt, _png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.2))
    colours = {"pca": "tab:red", "kmeans": "tab:blue"}
    for b, colour in colours.items():
        if b in mi:
            c = np.asarray(mi[b]["curve"])
            ax.plot(np.arange(len(c)), c, color=colour, lw=2.2, marker="o", ms=3, label=f"this image ({b})")
        if b in class_curves:
            c = class_curves[b]
            ax.plot(np.arange(len(c)), c, color=colour, lw=1.2, ls="--", label=f"its class ({b})")
        if b in dataset_curves and len(dataset_curves[b]):
            c = dataset_curves[b]
            ax.plot(np.arange(len(c)), c, color=colour, lw=1, ls=":", label=f"dataset ({b})")
    ax.set(xlabel="D_v descriptors removed (most important first)", ylabel="MI (nats)")
    ax.legend(fontsize=6)
    return _png(fig)
