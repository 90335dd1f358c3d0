"""saliency_maps → localisation_eval: how much of each method's saliency falls on the object (ground-truth masks).

Per method: pointing game (with a tolerance in pixels), energy pointing game, and the map as a soft segmentation
(min-max, foreground = map > its mean): pixel accuracy and foreground/background IoU accumulated over the dataset,
mIoU, mean AP (`cliplab.evaluation.localisation`). Masks: toyworld's part maps, or a mask folder (see
`DatasetCatalog.masks`), brought to the model's input geometry with nearest resampling. Empty masks are skipped
and counted. A dataset without masks gets an empty table that says so.
"""

import numpy as np
import pyarrow as pa
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from assets._report import table_metadata
from assets.partitions import model_and_dataset, model_dataset
from cliplab.errors import CliplabError
from cliplab.evaluation.localisation import METRIC_DIRECTION, TORCHRAY_TOLERANCE, LocalisationAccumulator
from cliplab.pixels import mask_transform
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.store import ArtifactStore

METRICS = ("pointing_game", "energy_pointing_game", "pixel_accuracy", "iou_foreground", "iou_background", "miou",
           "average_precision")
SCHEMA = pa.schema([("method", pa.string()), *((m, pa.float64()) for m in METRICS), ("n_images", pa.int64()),
                    ("n_empty", pa.int64()), ("tolerance", pa.int64())])


class LocalisationConfig(Config):
    tolerance: int = Field(default=TORCHRAY_TOLERANCE, ge=0)  # pointing game: a hit within this many pixels of the mask (TorchRay: 15)
    ap_average: str = "micro"  # AP of [map vs foreground, 1 − map vs background]: pooled ("micro") or averaged ("macro")


@asset(code_version="1", partitions_def=model_dataset, deps=[AssetKey("saliency_maps")], group_name="evaluation", kinds={"parquet"})
def localisation_eval(context: AssetExecutionContext, config: LocalisationConfig, datasets: DatasetCatalog,
                      zoo: ModelZoo, store: ArtifactStore) -> MaterializeResult:
    """Pointing game, energy pointing game, pixel accuracy, fg/bg mIoU and AP of every saliency method vs object masks."""
    import open_clip
    import torch

    model, dataset = model_and_dataset(context)
    if config.tolerance < 0 or config.ap_average not in ("micro", "macro"):
        raise CliplabError(f"tolerance must be >= 0 and ap_average 'micro' or 'macro' (got {config.tolerance}, {config.ap_average!r})")
    meta, batches = store.batches("saliency_maps", ["image_id", "method", "map"], model=model, dataset=dataset)
    h, w = int(meta["height"]), int(meta["width"])
    geometry = mask_transform(open_clip.image_transform((h, w), is_train=False, resize_mode=zoo.resize_mode))
    masks_of = datasets.masks(dataset, geometry)
    path = store.table_path("localisation_eval", model=model, dataset=dataset)
    if masks_of is None:
        store.write("localisation_eval", SCHEMA.empty_table(), model=model, dataset=dataset)
        context.log.warning(f"dataset {dataset!r} has no masks: nothing to localise against")
        return MaterializeResult(metadata={"dagster/row_count": 0, **table_metadata(path), "note": MetadataValue.md(
            f"`{dataset}` has no ground-truth masks: add a `masks` folder to its registry entry (one PNG per image)")})
    acc: dict[str, LocalisationAccumulator] = {}
    for batch in batches:
        ids = batch.column("image_id").to_pylist()
        methods = np.asarray(batch.column("method").to_pylist())
        flat = batch.column("map").flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(ids), h, w)
        truth = masks_of(ids)
        for method in np.unique(methods):
            rows = np.flatnonzero(methods == method)
            acc.setdefault(method, LocalisationAccumulator(config.tolerance, config.ap_average)).update(
                torch.from_numpy(flat[rows]), torch.from_numpy(truth[rows]))
    results = {m: a.result() for m, a in acc.items()}
    table = pa.table({"method": list(results), **{k: [r[k] for r in results.values()] for k in METRICS},
                      "n_images": [r["n_images"] for r in results.values()], "n_empty": [r["n_empty"] for r in results.values()],
                      "tolerance": [config.tolerance] * len(results)}, schema=SCHEMA)
    store.write("localisation_eval", table, model=model, dataset=dataset)
    n_empty = max((r["n_empty"] for r in results.values()), default=0)
    if n_empty:
        context.log.warning(f"{n_empty} image(s) with an empty mask excluded")
    header = "| method | " + " | ".join(f"{m} {METRIC_DIRECTION[m]}" for m in METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 1)]
    lines += [f"| {m} | " + " | ".join(f"{r[k]:.4f}" for k in METRICS) + " |" for m, r in results.items()]
    return MaterializeResult(metadata={
        "dagster/row_count": len(results), "images": max((r["n_images"] for r in results.values()), default=0),
        "empty masks excluded": n_empty, "tolerance (px)": config.tolerance, "ap average": config.ap_average,
        "metrics": MetadataValue.md("\n".join(lines)), **table_metadata(path),
    })
