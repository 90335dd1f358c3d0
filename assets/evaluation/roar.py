"""roar: RemOve And Retrain (Hooker et al., NeurIPS 2019) for every saliency method against a random ranking.

For each fraction t (10 … 90 %), every image of the train and of the test split loses its top-t % positions by the
saliency map of its ground-truth class prompt (all channels, filled with the per-channel mean of the train split's
pixels); a linear probe is retrained on the model's frozen unit image embeddings of the changed train split and
scored on the changed test split (`cliplab.evaluation.roar`). The control removes positions in a seeded random order,
drawn once per image for every t. Area ↑ between the random curve and a method's: the faster a method's removals
hurt the retrained probe, the more faithful its maps.

Splits: toyworld → its train split trains the probe, its evaluation split (val) tests it; a folder dataset → a seeded
50/50 split of its images (the first half of a seeded permutation trains, the second tests). Each split is then cut
to a seeded subset of its size. Maps are computed here in batches (one forward and backward per batch and method)
and kept in memory as float16; the pixels stay as float32 (3,000 images at 224 px ≈ 1.8 GB), since ROAR re-encodes
every split once per method and fraction.
"""

from dataclasses import dataclass
from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.evaluation._common import PixelModel, applicable_methods, dataset_default, pixel_model, positive, subset
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.evaluation.roar import DEFAULT_FRACTIONS, RoarSplit, random_ranking, roar_area, roar_curve
from cliplab.evaluation.saliency import SALIENCY_METHODS
from resources.datasets import DatasetCatalog, DatasetView
from resources.models import ModelZoo
from resources.store import ArtifactStore

RANDOM = "random"
SCHEMA = pa.schema([("method", pa.string()), ("fraction", pa.float64()), ("accuracy", pa.float64()),
                    ("area", pa.float64())],
                   metadata={"accuracy": "test top-1 of the retrained probe ↓ (lower = the removed pixels mattered)",
                             "area": "∫ (random − method) dt ↑ over the fractions, NaN for random"})


class RoarConfig(Config):
    methods: list[str] = list(SALIENCY_METHODS)
    fractions: list[float] = list(DEFAULT_FRACTIONS)  # t: the share of each image's positions removed, increasing
    train_images: Optional[int] = None  # None = the dataset's `roar_train_images` (registry), else 2000
    test_images: Optional[int] = None  # None = the dataset's `roar_test_images`, else 1000
    batch_size: int = Field(default=32, ge=1)
    seed: int = Field(default=0, ge=0)  # the subsets, the folder split, the random ranking and the probe


@asset(code_version="1", partitions_def=model_dataset, group_name="evaluation", kinds={"parquet"}, pool="gpu",
       deps=[AssetKey("class_text_embeddings"), AssetKey("dataset_manifest"), MODEL_CHECKPOINT])
def roar(context: AssetExecutionContext, config: RoarConfig, datasets: DatasetCatalog, zoo: ModelZoo,
         store: ArtifactStore) -> MaterializeResult:
    """Test top-1 ↓ of a probe retrained after removing each method's (and random) top-t % pixels; area ↑ vs random."""
    model, dataset = model_and_dataset(context)
    fractions = check_fractions(config.fractions)
    n_train = (positive("train_images", config.train_images)
               or dataset_default(datasets, dataset, "roar_train_images", 2000))
    n_test = positive("test_images", config.test_images) or dataset_default(datasets, dataset, "roar_test_images", 1000)
    pm = pixel_model(zoo, store, model, dataset)
    methods, skipped = applicable_methods(list(config.methods), pm.family, SALIENCY_METHODS)
    if not methods:
        raise CliplabError(f"no saliency method of {skipped} applies to {model!r}, a {pm.family}: nothing to compare")
    train_view, test_view = roar_views(datasets, partition_view(datasets, store, model, dataset), n_train, n_test, config.seed)
    n_images = len(train_view.manifest) + len(test_view.manifest)
    progress = Progress(context, n_images, f"ROAR saliency {model} × {dataset}")
    train = load_split(datasets, pm, train_view, methods, config.batch_size, progress)
    test = load_split(datasets, pm, test_view, methods, config.batch_size, progress)
    progress.close()
    maps_rate = progress.rate
    fill = train.pixels.mean(dim=(0, 2, 3), dtype=torch.float64).float()
    # as `cliplab.evaluation.roar.roar` draws them (train maps, then test maps), but once for every method
    generator = torch.Generator().manual_seed(config.seed)
    train.maps[RANDOM] = random_ranking(train.map_shape, generator)
    test.maps[RANDOM] = random_ranking(test.map_shape, generator)
    encode = unit_embeddings(pm, config.batch_size)
    probes = Progress(context, (len(methods) + 1) * len(fractions), f"ROAR probes {model} × {dataset}")
    curves = {}
    for name in [*methods, RANDOM]:
        curves[name] = roar_curve(encode, train.split(name), test.split(name), fill, fractions, config.seed)
        probes.update(len(fractions))
    probes.close()
    probe_seconds = probes.seconds
    areas = {m: roar_area(curves[m], curves[RANDOM], fractions) for m in methods}
    table = pa.table({
        "method": [m for m in curves for _ in fractions], "fraction": [t for _ in curves for t in fractions],
        "accuracy": np.concatenate(list(curves.values())),
        "area": [areas.get(m, float("nan")) for m in curves for _ in fractions]}, schema=SCHEMA)
    path = store.write("roar", table, model=model, dataset=dataset)
    figure = plots.metric_curves({m: (fractions, c) for m, c in curves.items()}, "fraction of pixels removed",
                                 "retrained probe test top-1 ↓", f"{model} × {dataset}: ROAR", ylim=(-0.02, 1.02))
    return MaterializeResult(metadata={
        "dagster/row_count": table.num_rows,
        "area vs random ↑": MetadataValue.json({m: round(a, 4) for m, a in areas.items()}),
        "train images": len(train.labels), "test images": len(test.labels),
        "splits": f"{train_view.split} → {test_view.split}" if train_view.split else "seeded 50/50 split of the images",
        "methods": methods, "skipped methods": skipped, "fractions": fractions,
        "fill (per-channel train mean)": [round(v, 4) for v in fill.tolist()], "seed": config.seed, "device": pm.device,
        "images/s (maps)": round(maps_rate, 2), "probe seconds": round(probe_seconds, 1),
        **table_metadata(path),
        **png_metadata(figure, store.figure_path("roar", f"{model}__{dataset}.png"), "ROAR curves"),
    })


def check_fractions(fractions: list[float]) -> list[float]:
    """At least two fractions (an area needs two points), strictly increasing, inside (0, 1)."""
    t = list(fractions)
    if len(t) < 2 or any(not 0 < f < 1 for f in t) or any(b <= a for a, b in zip(t, t[1:])):
        raise CliplabError(f"fractions must be at least two strictly increasing values in (0, 1), got {t}")
    return t


def roar_views(datasets: DatasetCatalog, view: DatasetView, n_train: int, n_test: int,
               seed: int) -> tuple[DatasetView, DatasetView]:
    """(train view, test view), each a seeded subset of at most n images: toyworld's train and evaluation splits, or
    for a folder dataset the two halves of a seeded permutation of its images (disjoint; manifest order kept)."""
    dataset = view.key
    if view.spec.kind == "toyworld":
        train, test = datasets.open_training(dataset), view
    else:
        order = np.random.default_rng(seed).permutation(len(view.manifest))
        half = len(order) // 2
        train, test = (DatasetView(view.key, view.spec, view.class_names, view.templates,
                                   view.manifest[np.sort(rows).tolist()], view.skipped)
                       for rows in (order[:half], order[half:]))
    train, test = subset(train, n_train, seed), subset(test, n_test, seed)
    if train.manifest["label"].n_unique() < 2 or test.manifest.is_empty():
        raise CliplabError(f"ROAR on {dataset!r} needs train images of at least 2 classes and some test images; got "
                           f"{len(train.manifest)} train images of {train.manifest['label'].n_unique()} classes, "
                           f"{len(test.manifest)} test images")
    return train, test


@dataclass
class LoadedSplit:
    """pixels (N, 3, H, W) float32 in [0, 1] on the CPU; labels (N,); maps: method → (N, H, W), float16 in [0, 1]
    for a saliency method, float32 U(0, 1) for the random ranking."""

    pixels: torch.Tensor
    labels: torch.Tensor
    maps: dict[str, torch.Tensor]

    @property
    def map_shape(self) -> tuple[int, int, int]:
        n, _, h, w = self.pixels.shape
        return n, h, w

    def split(self, method: str) -> RoarSplit:
        return RoarSplit(self.pixels, self.labels, self.maps[method])


def load_split(datasets: DatasetCatalog, pm: PixelModel, view: DatasetView, methods: list[str], batch_size: int,
               progress: Progress) -> LoadedSplit:
    """Every image of `view` with the saliency of its ground-truth class prompt by each method, batch by batch."""
    pixels, labels, maps = [], [], {m: [] for m in methods}
    for rows, batch in datasets.image_batches(view, pm.to_pixels, batch_size):
        classes = torch.from_numpy(rows["label"].to_numpy(writable=True))
        text, on_device = pm.text_for(classes), batch.to(pm.device)
        for m in methods:
            with pm.autocast():
                maps[m].append(SALIENCY_METHODS[m](pm.encoder, on_device, text).half().cpu())
        pixels.append(batch)
        labels.append(classes)
        progress.update(len(rows))
    return LoadedSplit(torch.cat(pixels), torch.cat(labels), {m: torch.cat(v) for m, v in maps.items()})


def unit_embeddings(pm: PixelModel, batch_size: int):
    """pixels (N, 3, H, W) on the CPU → the model's unit image embeddings (N, D) float32 on the CPU (ROAR's frozen
    features), encoded `batch_size` images at a time."""

    @torch.no_grad()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, len(pixels), batch_size):
            with pm.autocast():
                e = pm.encoder(pixels[s: s + batch_size].to(pm.device))
            out.append(torch.nn.functional.normalize(e.float(), dim=-1).cpu())
        return torch.cat(out)

    return encode

