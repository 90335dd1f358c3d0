"""prominent_patches and concept_clusters materialised on toyworld: shapes, ids, determinism, ground truth."""

import numpy as np
import polars as pl
import pytest

PART = "model=toy-vit.s0/dataset=toyworld/part-0.parquet"


def test_prominent_patches_rows_and_masks(quick_root):
    root, _, result = quick_root
    pp = pl.read_parquet(root / "prominent_patches" / PART)
    manifest = pl.read_parquet(root / "dataset_manifest" / PART)
    assert sorted(pp["image_id"].to_list()) == sorted(manifest["image_id"].to_list())
    masks = np.stack(pp["mask"].to_list())
    assert masks.shape == (96, 64)
    assert (masks.sum(1) == pp["n_foreground"].to_numpy()).all()
    assert (pp["no_prominent_region"].to_numpy() == (masks.sum(1) == 0)).all()
    meta = result.asset_materializations_for_node("prominent_patches")[0].metadata
    assert meta["method"].value == "joint" and meta["facet"].value == "tokens"
    assert 0.0 <= meta["mean IoU with object mask"].value <= 1.0


def test_concepts_only_on_foreground_patches_and_shared_per_class(quick_root):
    root, _, result = quick_root
    pp = pl.read_parquet(root / "prominent_patches" / PART)
    cc = pl.read_parquet(root / "concept_clusters" / PART)
    fg = {(i, p) for i, m in zip(pp["image_id"], pp["mask"].to_list()) for p in np.nonzero(m)[0]}
    assert {(i, p) for i, p in zip(cc["image_id"], cc["patch"])} == fg
    assert cc["pca_concept"].is_between(0, 4).all() and cc["kmeans_concept"].is_between(0, 4).all()
    meta = result.asset_materializations_for_node("concept_clusters")[0].metadata
    assert 0.0 < meta["part purity (pca)"].value <= 1.0 and 0.0 < meta["part purity (kmeans)"].value <= 1.0


def test_rerun_gives_the_same_concepts(quick_root):
    from assets.partitions import partition_key
    from pipelines.definitions import defs, resources_from_env

    root, instance, _ = quick_root
    before = pl.read_parquet(root / "concept_clusters" / PART)
    res = defs.resolve_job_def("analyse").execute_in_process(
        instance=instance, partition_key=partition_key("toy-vit.s0", "toyworld"), resources=resources_from_env(str(root)),
        asset_selection=None)
    assert res.success
    assert pl.read_parquet(root / "concept_clusters" / PART).equals(before)


@pytest.mark.slow
def test_prominent_patches_and_concepts_against_toyworld_ground_truth(trained_root):
    """With the trained toy CLIP, the paper's per-image eigenvector finds the objects (IoU ≥ 0.5) and the
    concepts follow the parts better than chance (purity above shuffled concept ids)."""
    from dagster import materialize

    from assets.mutual import concepts
    from assets.partitions import partition_key
    from cliplab.toy.groundtruth import cluster_purity, patch_parts
    from pipelines.definitions import resources_from_env
    from resources.datasets import DatasetCatalog

    root, instance, result, _ = trained_root
    joint = result.asset_materializations_for_node("prominent_patches")[0].metadata
    print(f"\njoint/tokens (reference): IoU {joint['mean IoU with object mask'].value:.3f}")
    res = materialize([concepts.prominent_patches, concepts.concept_clusters], instance=instance,
                      partition_key=partition_key("toy-vit.s0", "toyworld"), resources=resources_from_env(str(root)),
                      run_config={"ops": {"prominent_patches": {"config": {"method": "per_image"}}}})
    meta = {m.asset_key.path[-1]: m.metadata for n in ("prominent_patches", "concept_clusters")
            for m in res.asset_materializations_for_node(n)}
    iou = meta["prominent_patches"]["mean IoU with object mask"].value
    purity = meta["concept_clusters"]["part purity (kmeans)"].value
    cc = pl.read_parquet(root / "concept_clusters" / PART)
    ids, maps = DatasetCatalog(artifacts_root=str(root)).part_maps("toyworld")
    parts = dict(zip(ids, patch_parts(maps, (8, 8))))
    true = np.array([parts[i][p] for i, p in zip(cc["image_id"], cc["patch"])])
    rng = np.random.default_rng(0)
    shuffled = np.mean([cluster_purity(rng.permutation(cc["kmeans_concept"].to_numpy()), true) for _ in range(5)])
    print(f"per_image/tokens: IoU {iou:.3f}; k-means purity {purity:.3f} (shuffled ids {shuffled:.3f})")
    assert iou >= 0.5
    assert purity > shuffled + 0.1
