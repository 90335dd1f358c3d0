"""What the evaluation assets share: the model in pixel space with its class prompts, a seeded image subset,
the target class of each image, and dataset-level defaults from the registry."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from assets.data import read_class_weights
from cliplab.errors import CliplabError
from cliplab.pixels import PixelEncoder, split_preprocess
from resources.datasets import DatasetCatalog, DatasetView
from resources.models import ModelZoo
from resources.store import ArtifactStore

TARGETS = ("ground_truth", "prediction")
VIT_ONLY = {"grad_eclip"}  # saliency methods that read a ViT's attention


@dataclass
class PixelModel:
    """A model ready for gradients w.r.t. [0, 1] pixels: encoder f (Normalize inside), class prompts W (K, D)."""

    key: str
    encoder: PixelEncoder
    weights: "torch.Tensor"  # noqa: F821 — (K, D) unit class text embeddings, on `device`
    to_pixels: object  # PIL image → (3, H, W) in [0, 1]
    device: str
    family: str  # "vit" or "resnet"
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.startswith("cuda") else contextlib.nullcontext()

    def logits(self, pixels, autocast: bool = True):
        """100 · normalize(f(x)) @ Wᵀ: (B, K), CLIP's zero-shot logits, differentiable w.r.t. pixels. Attacks pass
        autocast=False: bf16 gradients are coarse enough to weaken an attack and overstate robustness."""
        import torch

        with self.autocast() if autocast else contextlib.nullcontext():
            e = self.encoder(pixels)
        return 100.0 * torch.nn.functional.normalize(e.float(), dim=-1) @ self.weights.T

    def text_for(self, classes) -> "torch.Tensor":  # noqa: F821
        """(B, D) unit text embedding of each image's target class."""
        return self.weights[classes.to(self.weights.device)]


def pixel_model(zoo: ModelZoo, store: ArtifactStore, model: str, dataset: str) -> PixelModel:
    m = zoo.load(model)
    to_pixels, mean, std = split_preprocess(m.preprocess)
    encoder = PixelEncoder(m.model.visual, mean, std).to(m.device).eval()
    weights = read_class_weights(store, model, dataset).to(m.device)
    return PixelModel(model, encoder, weights, to_pixels, m.device, m.family, m.image_size, mean, std)


def subset(view: DatasetView, n: int | None, seed: int) -> DatasetView:
    """At most `n` images of `view`, a seeded choice kept in manifest order (None: all)."""
    if n is None or n >= len(view.manifest):
        return view
    rows = np.sort(np.random.default_rng(seed).permutation(len(view.manifest))[:n])
    return DatasetView(view.key, view.spec, view.class_names, view.templates, view.manifest[rows.tolist()],
                       view.skipped, split=view.split)


def dataset_default(datasets: DatasetCatalog, dataset: str, name: str, default: int) -> int:
    """A dataset-level size (e.g. `robust_images`) from the registry entry's options, else the protocol's default."""
    value = datasets.spec(dataset).options.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CliplabError(f"dataset {dataset!r}: registry option {name!r} must be an integer >= 1, got {value!r}")
    return value


def positive(name: str, value: int | None) -> int | None:
    """A config size that must be >= 1 when given (None = the default)."""
    if value is not None and value < 1:
        raise CliplabError(f"{name} must be >= 1, got {value}")
    return value


def check_target(target: str) -> str:
    if target not in TARGETS:
        raise CliplabError(f"target must be one of {TARGETS}, not {target!r}")
    return target


def target_classes(store: ArtifactStore, model: str, dataset: str, rows: pl.DataFrame, target: str) -> np.ndarray:
    """(B,) class index per row: its label (`ground_truth`) or the zero-shot top-1 (`prediction`)."""
    if check_target(target) == "ground_truth":
        return rows["label"].to_numpy(writable=True)
    preds = (store.read("zero_shot_predictions", model=model, dataset=dataset)
             .select("image_id", pl.col("top5_index").list.first().alias("pred")).collect())
    joined = rows.select("image_id").join(preds, on="image_id", how="left", maintain_order="left")
    if joined["pred"].null_count():
        raise CliplabError(f"zero_shot_predictions of {model} × {dataset} lacks {joined['pred'].null_count()} images: re-materialise it")
    return joined["pred"].to_numpy(writable=True)


def applicable_methods(requested: list[str], family: str, known) -> tuple[list[str], list[str]]:
    """(methods to run, methods skipped for this architecture); unknown names are an error."""
    unknown = [m for m in requested if m not in known]
    if unknown or not requested:
        raise CliplabError(f"saliency methods must be a non-empty subset of {sorted(known)}, got {requested!r}")
    skipped = [m for m in requested if m in VIT_ONLY and family != "vit"]
    return [m for m in requested if m not in skipped], skipped
