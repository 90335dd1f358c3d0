"""The main job materialised in process on a small toyworld: what lands on disk, exactly where."""

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from cliplab.toy import toyworld
from resources.lance import LanceStore
from resources.models import ModelZoo

PART = "model=toy-vit.s0/dataset=toyworld/part-0.parquet"


def test_every_artifact_is_where_the_design_says(quick_root):
    root, _, _ = quick_root
    for asset in ("dataset_manifest", "class_text_embeddings", "zero_shot_predictions", "patch_features",
                  "prominent_patches", "concept_clusters"):
        assert (root / asset / PART).is_file(), asset
    assert (root / "toyworld/split=train/part-0.parquet").is_file()
    assert (root / "toyworld/split=val/part-0.parquet").is_file()
    ckpt = root / "checkpoints/toy-vit.s0"
    assert sorted(p.name for p in ckpt.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert not list((root / ".staging").iterdir())  # nothing half-written left behind


def test_no_output_is_pickled_into_the_instance(quick_root):
    """Every asset writes its own files and returns MaterializeResult: the IO manager stores nothing."""
    from pathlib import Path

    _, instance, _ = quick_root
    storage = Path(instance.storage_directory())
    assert not [p for p in storage.rglob("*") if p.is_file()], "outputs pickled by the IO manager"


def test_every_asset_check_runs_and_passes_on_the_toy_partition(quick_root):
    _, _, result = quick_root
    evaluations = [e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    names = {(e.asset_key.path[-1], e.check_name): e.passed for e in evaluations}
    assert set(names) == {("zero_shot_predictions", "rows_match_manifest"), ("zero_shot_predictions", "above_chance"),
                          ("patch_features", "rows_match_manifest"), ("patch_features", "finite"),
                          ("patch_features", "unit_norm"), ("class_text_embeddings", "finite"),
                          ("class_text_embeddings", "unit_norm"), ("head_contributions", "parts_sum_to_embedding"),
                          ("mi_curves", "mi_curve_sentinel_and_bounds")}
    # the quick toy CLIP is barely trained: above_chance must say what its predictions say
    root, _, _ = quick_root
    preds = pl.read_parquet(root / "zero_shot_predictions" / PART)
    chance = 1 / pl.read_parquet(root / "class_text_embeddings" / PART).height
    assert names.pop(("zero_shot_predictions", "above_chance")) == (preds["correct"].mean() > chance)
    assert all(names.values()), names


def test_partitions_registered_in_the_instance(quick_root):
    _, instance, _ = quick_root
    assert instance.get_dynamic_partitions("model") == ["toy-vit.s0"]
    assert instance.get_dynamic_partitions("dataset") == ["toyworld"]


def test_manifest_and_predictions(quick_root):
    root, _, result = quick_root
    manifest = pl.read_parquet(root / "dataset_manifest" / PART)
    assert manifest.height == 96 and manifest["image_id"].n_unique() == 96
    assert manifest["class_name"].to_list() == [toyworld.class_names()[i] for i in manifest["label"]]
    preds = pl.scan_parquet(root / "zero_shot_predictions/**/*.parquet", hive_partitioning=True).collect()
    assert preds.height == 96
    assert set(preds["model"]) == {"toy-vit.s0"} and set(preds["dataset"]) == {"toyworld"}
    assert preds["image_id"].to_list() == manifest["image_id"].to_list()
    probs = np.stack(preds["top5_prob"].to_numpy())
    assert probs.shape == (96, 5) and np.all(np.diff(probs, axis=1) <= 0)
    top1 = np.array([ix[0] for ix in preds["top5_index"].to_list()])
    assert preds["correct"].to_list() == list(top1 == preds["label"].to_numpy())
    meta = result.asset_materializations_for_node("image_encodings")
    acc = {m.asset_key.path[-1]: m.metadata for m in meta}["zero_shot_predictions"]["top-1 accuracy"].value
    assert acc == pytest.approx(preds["correct"].mean())


def test_class_text_embeddings_in_parquet_and_lancedb(quick_root):
    root, _, _ = quick_root
    df = pl.read_parquet(root / "class_text_embeddings" / PART)
    w = np.stack(df["vector"].to_numpy())
    assert w.shape == (12, 128)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, atol=1e-5)
    lance = LanceStore(uri=str(root / "lancedb")).table("class_text_embeddings").to_polars().collect()
    assert lance.height == 12 and set(lance["model"]) == {"toy-vit.s0"}
    nearest = LanceStore(uri=str(root / "lancedb")).table("class_text_embeddings").search(w[3]).limit(1).to_polars()
    assert nearest["class_index"][0] == 3


def test_patch_features_match_the_model(quick_root):
    """Stored rows equal a fresh forward pass of the stored checkpoint (the real loader, the real files)."""
    from cliplab.features import patch_features
    from cliplab.toy.clip import images_to_tensor
    from resources.images import decode_image

    root, _, _ = quick_root
    pf = pq.ParquetFile(root / "patch_features" / PART)
    meta = pf.schema_arrow.metadata
    assert (meta[b"grid_h"], meta[b"grid_w"], meta[b"width"]) == (b"8", b"8", b"128")
    assert pf.metadata.num_rows == 96 and pf.metadata.num_row_groups >= 2  # written batch by batch
    rows = pl.read_parquet(root / "patch_features" / PART).head(4)
    tw = pl.read_parquet(root / "toyworld/split=val/part-0.parquet").filter(pl.col("image_id").is_in(rows["image_id"].to_list()))
    images = np.stack([np.asarray(decode_image(b)) for b in tw["image_png"]])
    m = ModelZoo(artifacts_root=str(root), device="cpu").load("toy-vit.s0")
    with torch.inference_mode():
        f = patch_features(m.model, images_to_tensor(images))
    np.testing.assert_allclose(np.stack(rows["tokens"].to_numpy()), f.tokens.reshape(4, -1).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.stack(rows["keys"].to_numpy()), f.keys.reshape(4, -1).numpy(), atol=1e-4)
    np.testing.assert_allclose(np.stack(rows["embedding"].to_numpy()), f.embedding.numpy(), atol=1e-5)


def test_metadata_carries_pictures_and_counts(quick_root, assert_figure):
    _, _, result = quick_root
    mats = {m.asset_key.path[-1]: m.metadata for node in ("checkpoint", "image_encodings", "toyworld")
            for m in result.asset_materializations_for_node(node)}
    assert mats["patch_features"]["dagster/row_count"].value == 96
    assert mats["patch_features"]["images/s"].value > 0
    assert assert_figure(mats["checkpoint"], "loss curve")
    assert assert_figure(mats["zero_shot_predictions"], "per-class accuracy")
    assert assert_figure(mats["patch_features"], "token PCA")


def test_rematerialising_replaces_the_partition(quick_root):
    from assets.partitions import partition_key
    from pipelines.definitions import defs, resources_from_env

    root, instance, _ = quick_root
    before = pl.read_parquet(root / "zero_shot_predictions" / PART)
    res = defs.resolve_job_def("analyse").execute_in_process(
        instance=instance, partition_key=partition_key("toy-vit.s0", "toyworld"), resources=resources_from_env(str(root)))
    assert res.success
    after = pl.read_parquet(root / "zero_shot_predictions" / PART)
    assert after.height == before.height  # replaced, not appended
    assert after.equals(before)  # and deterministic
    lance = LanceStore(uri=str(root / "lancedb")).table("class_text_embeddings").to_polars().collect()
    assert lance.height == 12


def test_checkpoint_sidecar(quick_root):
    root, _, _ = quick_root
    side = json.loads((root / "checkpoints/toy-vit.s0/open_clip_config.json").read_text())
    assert side["model_cfg"]["vision_cfg"]["layers"] >= 4
    assert side["cliplab"]["train"]["steps"] == 4 and len(side["cliplab"]["sha256"]) == 64
    # open_clip itself loads the folder (its local-dir format)
    import open_clip

    model = open_clip.create_model(f"local-dir:{root / 'checkpoints/toy-vit.s0'}")
    assert model.visual.transformer.resblocks[0].attn.num_heads == 4


def test_tables_are_described_for_the_ui(quick_root):
    """Row count and column schema from the written file; small plain tables also as a preview."""
    root, _, result = quick_root
    feats = result.asset_materializations_for_node("image_encodings")
    meta = {m.asset_key.path[-1]: m.metadata for m in feats}["patch_features"]
    columns = [c.name for c in meta["dagster/column_schema"].schema.columns]
    assert columns == pq.read_schema(root / "patch_features" / PART).names and "embedding" in columns
    assert meta["dagster/row_count"].value == pq.read_metadata(root / "patch_features" / PART).num_rows
    loc = result.asset_materializations_for_node("localisation_eval")[0].metadata
    records = loc["preview"].value.records  # one row per saliency method: shown as a table
    assert sorted(r.data["method"] for r in records) == ["grad_cam", "grad_eclip", "simple_gradient"]
