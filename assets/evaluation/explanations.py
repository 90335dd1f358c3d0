"""explanation_robustness: how stable each saliency method's map is under input noise (the AFT paper's SSIM test).

For s = 1 … 9 /255: SSIM (data_range = 1) between the map of x and of clamp(x + N(0, s²)), per image, on a seeded
subset; per (method, s) the mean and a 95 % Student-t interval over images (`cliplab.evaluation.explanation_robustness`).
"""

from typing import Optional

import numpy as np
import pyarrow as pa
import torch
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._report import Progress, png_metadata, table_metadata
from assets.data import partition_view
from assets.evaluation._common import (
    applicable_methods,
    check_target,
    dataset_default,
    pixel_model,
    positive,
    subset,
    target_classes,
)
from assets.partitions import MODEL_CHECKPOINT, model_and_dataset, model_dataset
from cliplab import plots
from cliplab.errors import CliplabError
from cliplab.evaluation.explanation_robustness import noise_ssim, summarise
from cliplab.evaluation.saliency import SALIENCY_METHODS
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.store import ArtifactStore

SCHEMA = pa.schema([("method", pa.string()), ("sigma_255", pa.float64()), ("ssim_mean", pa.float64()),
                    ("ssim_ci_low", pa.float64()), ("ssim_ci_high", pa.float64()), ("n_images", pa.int64())])


class ExplanationRobustnessConfig(Config):
    methods: list[str] = list(SALIENCY_METHODS)
    sigmas: list[float] = [float(s) for s in range(1, 10)]  # noise s.d. in units of 1/255
    images: Optional[int] = None  # seeded subset; None = the dataset's `robustness_images` (registry), else 256
    target: str = "ground_truth"
    batch_size: int = Field(default=32, ge=1)
    seed: int = Field(default=0, ge=0)


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("saliency_maps"), AssetKey("class_text_embeddings"), MODEL_CHECKPOINT],
       group_name="evaluation", kinds={"parquet"}, pool="gpu")
def explanation_robustness(context: AssetExecutionContext, config: ExplanationRobustnessConfig, datasets: DatasetCatalog,
                           zoo: ModelZoo, store: ArtifactStore) -> MaterializeResult:
    """SSIM between the saliency map of x and of x + N(0, s²), s = 1…9/255: mean and 95 % CI per method and s."""
    model, dataset = model_and_dataset(context)
    check_target(config.target)
    n = positive("images", config.images) or dataset_default(datasets, dataset, "robustness_images", 256)
    if not config.sigmas or any(s <= 0 for s in config.sigmas):
        raise CliplabError(f"sigmas must be a non-empty list of positive noise levels (1/255), got {config.sigmas}")
    pm = pixel_model(zoo, store, model, dataset)
    methods, skipped = applicable_methods(list(config.methods), pm.family, SALIENCY_METHODS)
    view = subset(partition_view(datasets, store, model, dataset), n, config.seed)
    if len(view.manifest) < 2:
        raise CliplabError(f"explanation_robustness needs at least 2 images for a confidence interval, {dataset!r} has {len(view.manifest)}")
    sigmas = tuple(s / 255 for s in config.sigmas)
    gen = torch.Generator().manual_seed(config.seed)
    ssim = {m: [] for m in methods}
    progress = Progress(context, len(view.manifest), f"explanation SSIM {model} × {dataset}")
    for rows, pixels in datasets.image_batches(view, pm.to_pixels, config.batch_size):
        pixels = pixels.to(pm.device)
        text = pm.text_for(torch.as_tensor(target_classes(store, model, dataset, rows, config.target)))
        for m in methods:
            with pm.autocast():
                ssim[m].append(noise_ssim(SALIENCY_METHODS[m], pm.encoder, pixels, text, gen, sigmas))
        progress.update(len(rows))
    progress.close()
    summaries = {m: summarise(torch.cat(v, dim=1), sigmas) for m, v in ssim.items()}
    table = pa.table({
        "method": [m for m in methods for _ in sigmas], "sigma_255": [s for _ in methods for s in config.sigmas],
        "ssim_mean": np.concatenate([summaries[m].mean for m in methods]),
        "ssim_ci_low": np.concatenate([summaries[m].low for m in methods]),
        "ssim_ci_high": np.concatenate([summaries[m].high for m in methods]),
        "n_images": [summaries[m].n for m in methods for _ in sigmas]}, schema=SCHEMA)
    path = store.write("explanation_robustness", table, model=model, dataset=dataset)
    at4 = {m: float(np.interp(4.0, config.sigmas, summaries[m].mean)) for m in methods}
    figure = plots.ssim_curves({m: (config.sigmas, s.mean, s.low, s.high) for m, s in summaries.items()},
                               f"{model} × {dataset}: explanation SSIM under noise")
    return MaterializeResult(metadata={
        "dagster/row_count": table.num_rows, "images": summaries[methods[0]].n, "methods": methods,
        "skipped methods": skipped, "sigmas (1/255)": list(config.sigmas), "seed": config.seed,
        "SSIM at s = 4/255": MetadataValue.json({m: round(v, 4) for m, v in at4.items()}),
        **table_metadata(path),
        **png_metadata(figure, store.figure_path("explanation_robustness", f"{model}__{dataset}.png"), "SSIM vs noise"),
    })
