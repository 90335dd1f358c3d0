"""patch_features → prominent_patches → concept_clusters (mutual knowledge, steps 3–5).

Both work one class at a time, as the reference does (its joint SVD and its concepts are over a class
folder), reading only that class's rows of `patch_features` (manifests are sorted by label, so
Parquet row-group statistics skip the rest). On toyworld the metadata scores them against ground
truth: IoU of the prominent patches with the object mask, purity of the concepts against the parts.
"""

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from dagster import AssetExecutionContext, AssetKey, Config, MaterializeResult, asset
from pydantic import Field

from assets.partitions import model_and_dataset, model_dataset
from cliplab.mutual.cleanup import largest_components
from cliplab.mutual.concepts import kmeans_concepts, pca_concepts
from cliplab.mutual.spectral import prominent_patches as spectral_foreground
from cliplab.toy.groundtruth import cluster_purity, mask_iou, object_patches, patch_parts
from resources.datasets import DatasetCatalog
from resources.store import ArtifactStore

PATCH_FEATURES = AssetKey("patch_features")


class ProminentConfig(Config):
    facet: str = "tokens"  # "tokens" [reference] or "keys" [the paper's text]
    method: str = "joint"  # "joint" [reference], "per_image" [paper text], "fiedler" [TokenCut]
    min_second: int = Field(default=5, ge=0)


def patch_grid(store: ArtifactStore, model: str, dataset: str) -> tuple[int, int]:
    """(h, w) patch grid of a patch_features partition, from its schema metadata."""
    meta = pq.read_schema(store.table_path("patch_features", model=model, dataset=dataset)).metadata
    return int(meta[b"grid_h"]), int(meta[b"grid_w"])


def _features(store: ArtifactStore, model: str, dataset: str):
    """(path, grid (h, w), width C, sorted class labels) of a patch_features partition."""
    path = store.table_path("patch_features", model=model, dataset=dataset)
    meta = pq.read_schema(path).metadata
    grid = patch_grid(store, model, dataset)
    labels = pl.scan_parquet(path).select(pl.col("label").unique().sort()).collect()["label"].to_list()
    return path, grid, int(meta[b"width"]), labels


def _class_rows(path: str, label: int, columns: list[str]) -> pl.DataFrame:
    return pl.scan_parquet(path).filter(pl.col("label") == label).select(columns).collect()


def _facet_array(rows: pl.DataFrame, facet: str) -> np.ndarray:
    """A facet column of patch_features rows as float32 (B, N·C), whichever dtype it is stored in (float16 or float32)."""
    return rows[facet].to_numpy(writable=True).astype(np.float32, copy=False)


PROMINENT_SCHEMA = pa.schema([("image_id", pa.string()), ("label", pa.int64()), ("mask", pa.list_(pa.bool_())),
                              ("n_foreground", pa.int32()), ("no_prominent_region", pa.bool_())])


@asset(code_version="1", partitions_def=model_dataset, deps=[PATCH_FEATURES], group_name="mutual_knowledge", kinds={"parquet"})
def prominent_patches(context: AssetExecutionContext, config: ProminentConfig, store: ArtifactStore,
                      datasets: DatasetCatalog) -> MaterializeResult:
    """Per image the foreground mask on the patch grid (spectral, then the connected-component clean-up)."""
    import torch

    model, dataset = model_and_dataset(context)
    path, grid, width, labels = _features(store, model, dataset)
    masks, ids = [], []
    schema = PROMINENT_SCHEMA.with_metadata({"facet": config.facet, "method": config.method})
    with store.writer("prominent_patches", schema, model=model, dataset=dataset) as w:
        for label in labels:
            rows = _class_rows(path, label, ["image_id", config.facet])
            f = torch.from_numpy(_facet_array(rows, config.facet)).view(len(rows), grid[0] * grid[1], width)
            mask = spectral_foreground(f, method=config.method).numpy()
            mask = largest_components(mask.reshape(-1, *grid), config.min_second).reshape(len(rows), -1)
            n_fg = mask.sum(axis=1)
            w.write_table(pa.table({"image_id": rows["image_id"].to_list(), "label": [label] * len(rows), "mask": mask.tolist(),
                                    "n_foreground": n_fg.astype(np.int32), "no_prominent_region": n_fg == 0},
                                   schema=schema))
            masks.append(mask)
            ids += rows["image_id"].to_list()
    mask = np.concatenate(masks)
    meta = {"dagster/row_count": len(ids), "facet": config.facet, "method": config.method,
            "images with no prominent region": int((mask.sum(1) == 0).sum()),
            "mean foreground fraction": float(mask.mean())}
    truth = datasets.part_maps(dataset)
    if truth is not None:
        order = {i: k for k, i in enumerate(truth[0])}
        objects = object_patches(truth[1][[order[i] for i in ids]], grid)
        meta["mean IoU with object mask"] = float(mask_iou(mask, objects).mean())
        context.log.info(f"prominent patches vs object masks: mean IoU {meta['mean IoU with object mask']:.3f}")
    return MaterializeResult(metadata=meta)


class ConceptConfig(Config):
    L: int = Field(default=5, ge=1)
    seed: int = Field(default=0, ge=0)


CONCEPT_SCHEMA = pa.schema([("image_id", pa.string()), ("label", pa.int64()), ("patch", pa.int32()),
                            ("pca_concept", pa.int32()), ("kmeans_concept", pa.int32())])


@asset(code_version="1", partitions_def=model_dataset, deps=[prominent_patches], group_name="mutual_knowledge", kinds={"parquet"})
def concept_clusters(context: AssetExecutionContext, config: ConceptConfig, store: ArtifactStore,
                     datasets: DatasetCatalog) -> MaterializeResult:
    """Per class, PCA and k-means concept ids (L, seeded) for every foreground patch; ids shared across the class's images."""
    model, dataset = model_and_dataset(context)
    path, grid, width, labels = _features(store, model, dataset)
    masks_path = store.table_path("prominent_patches", model=model, dataset=dataset)
    facet = pq.read_schema(masks_path).metadata[b"facet"].decode()  # the features the masks were cut from
    truth = datasets.part_maps(dataset)
    parts_by_id = dict(zip(truth[0], patch_parts(truth[1], grid))) if truth is not None else None
    scored = {"pca": [], "kmeans": [], "part": []}
    n_rows = 0
    schema = CONCEPT_SCHEMA.with_metadata({"L": str(config.L), "seed": str(config.seed), "facet": facet})
    with store.writer("concept_clusters", schema, model=model, dataset=dataset) as w:
        for label in labels:
            rows = _class_rows(path, label, ["image_id", facet]).join(
                _class_rows(masks_path, label, ["image_id", "mask"]), on="image_id", maintain_order="left")
            f = _facet_array(rows, facet).reshape(len(rows), -1, width)
            mask = np.stack(rows["mask"].to_list()).astype(bool)
            img, patch = np.nonzero(mask)
            x = f[img, patch]  # (P, C) the class's foreground patches
            pca, km = pca_concepts(x, config.L, config.seed), kmeans_concepts(x, config.L, config.seed)
            ids = rows["image_id"].to_numpy()[img]
            w.write_table(pa.table({"image_id": ids, "label": [label] * len(ids), "patch": patch.astype(np.int32),
                                    "pca_concept": pca.astype(np.int32), "kmeans_concept": km.astype(np.int32)},
                                   schema=schema))
            n_rows += len(ids)
            if parts_by_id is not None:
                part = np.array([parts_by_id[i][p] for i, p in zip(ids, patch)], dtype=np.int64)
                for name, c in (("pca", pca), ("kmeans", km)):
                    scored[name].append(cluster_purity(c, part) * len(c))
                scored["part"].append(len(part))
    meta = {"dagster/row_count": n_rows, "L": config.L, "seed": config.seed, "facet": facet}
    if parts_by_id is not None and sum(scored["part"]):
        for name in ("pca", "kmeans"):
            meta[f"part purity ({name})"] = float(sum(scored[name]) / sum(scored["part"]))
        context.log.info(f"concept purity vs parts: PCA {meta['part purity (pca)']:.3f}, k-means {meta['part purity (kmeans)']:.3f}")
    return MaterializeResult(metadata=meta)
