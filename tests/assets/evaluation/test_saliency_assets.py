"""saliency_maps → localisation_eval, explanation_robustness, materialised in process on the quick toyworld."""

import shutil

import numpy as np
import polars as pl
import pytest
import torch
from dagster import DagsterInstance, materialize

from assets.evaluation import explanations, localisation, saliency
from assets.evaluation._common import pixel_model
from assets.partitions import partition_key
from cliplab.evaluation.localisation import LocalisationAccumulator
from cliplab.evaluation.saliency import SALIENCY_METHODS
from pipelines.definitions import resources_from_env

KEY = partition_key("toy-vit.s0", "toyworld")


@pytest.fixture(scope="module")
def evaluated(quick_root, tmp_path_factory):
    """A copy of the quick root with the class prompts, predictions and saliency maps of 40 images."""
    src, _, _ = quick_root
    root = tmp_path_factory.mktemp("eval") / "artifacts"
    for part in ("checkpoints", "toyworld", "dataset_manifest", "class_text_embeddings", "zero_shot_predictions"):
        shutil.copytree(src / part, root / part)
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    res = resources_from_env(str(root))
    result = materialize([saliency.saliency_maps], instance=instance, partition_key=KEY, resources=res,
                         run_config={"ops": {"saliency_maps": {"config": {"images": 40, "batch_size": 16}}}})
    assert result.success
    return root, instance, res, result


def _maps(store, method=None):
    df = store.read("saliency_maps", model="toy-vit.s0", dataset="toyworld").collect()
    return df if method is None else df.filter(pl.col("method") == method)


def test_saliency_maps_are_the_methods_on_the_stored_images(evaluated, assert_figure):
    root, _, res, result = evaluated
    store = res["store"]
    df = _maps(store)
    assert df.schema["map"] == pl.Array(pl.Float16, 64 * 64) and "map_small" in df.columns  # 64 px > 56: a copy too
    assert len(df) == 40 * 3 and set(df["method"]) == set(SALIENCY_METHODS)
    meta = result.asset_materializations_for_node("saliency_maps")[0].metadata
    assert meta["images"].value == 40 and assert_figure(meta, "saliency maps")

    # recompute every method on 8 of the stored images: equal to float16 rounding
    pm = pixel_model(res["zoo"], store, "toy-vit.s0", "toyworld")
    view = res["datasets"].open("toyworld")
    ids = df["image_id"].unique(maintain_order=True).to_list()[:8]
    rows = view.manifest.filter(pl.col("image_id").is_in(ids))
    sub = type(view)(view.key, view.spec, view.class_names, view.templates, rows, split=view.split)
    (batch_rows, pixels), = list(res["datasets"].image_batches(sub, pm.to_pixels, 8))
    text = pm.text_for(torch.as_tensor(batch_rows["label"].to_numpy()))
    for method, fn in SALIENCY_METHODS.items():
        got = _maps(store, method).filter(pl.col("image_id").is_in(ids))
        got = {i: np.asarray(m, np.float32).reshape(64, 64) for i, m in zip(got["image_id"], got["map"])}
        want = fn(pm.encoder, pixels, text).numpy()
        for i, image_id in enumerate(batch_rows["image_id"]):
            np.testing.assert_allclose(got[image_id], want[i], atol=2e-3)  # float16 storage of [0, 1] values


def test_localisation_equals_the_accumulator_on_the_object_masks(evaluated):
    root, instance, res, _ = evaluated
    result = materialize([localisation.localisation_eval], instance=instance, partition_key=KEY, resources=res,
                         run_config={"ops": {"localisation_eval": {"config": {"tolerance": 3}}}})
    assert result.success
    table = res["store"].read("localisation_eval", model="toy-vit.s0", dataset="toyworld").collect()
    assert set(table["method"]) == set(SALIENCY_METHODS) and (table["tolerance"] == 3).all()
    ids_all, parts = res["datasets"].part_maps("toyworld")
    index = {i: n for n, i in enumerate(ids_all)}
    for method in SALIENCY_METHODS:
        df = _maps(res["store"], method)
        maps = torch.from_numpy(np.stack([np.asarray(m, np.float32).reshape(64, 64) for m in df["map"]]))
        masks = torch.from_numpy(np.stack([parts[index[i]] > 0 for i in df["image_id"]]))
        acc = LocalisationAccumulator(3)
        acc.update(maps, masks)
        want, got = acc.result(), table.filter(pl.col("method") == method).row(0, named=True)
        for k in ("pointing_game", "energy_pointing_game", "pixel_accuracy", "miou", "average_precision"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), (method, k)
        assert got["n_images"] == 40 and 0 <= got["energy_pointing_game"] <= 1


def test_explanation_robustness_ssim_per_method_and_noise(evaluated):
    root, instance, res, _ = evaluated
    cfg = {"images": 12, "sigmas": [1.0, 4.0, 9.0], "methods": ["grad_cam", "simple_gradient"]}
    result = materialize([explanations.explanation_robustness], instance=instance, partition_key=KEY, resources=res,
                         run_config={"ops": {"explanation_robustness": {"config": cfg}}})
    assert result.success
    df = res["store"].read("explanation_robustness", model="toy-vit.s0", dataset="toyworld").collect()
    assert df.height == 6 and (df["n_images"] == 12).all()
    assert ((df["ssim_ci_low"] <= df["ssim_mean"]) & (df["ssim_mean"] <= df["ssim_ci_high"]) & (df["ssim_mean"] <= 1)).all()
    for method in ("grad_cam", "simple_gradient"):
        s = df.filter(pl.col("method") == method).sort("sigma_255")["ssim_mean"].to_list()
        assert s[0] > s[-1]  # more noise, less similar maps
    meta = result.asset_materializations_for_node("explanation_robustness")[0].metadata
    assert set(meta["SSIM at s = 4/255"].value) == {"grad_cam", "simple_gradient"}


@pytest.mark.parametrize("asset, cfg, message", [
    (saliency.saliency_maps, {"methods": ["smoothgrad"]}, "saliency methods must be"),
    (saliency.saliency_maps, {"target": "guess"}, "target must be one of"),
    (saliency.saliency_maps, {"images": 0}, "images must be >= 1"),
    (explanations.explanation_robustness, {"sigmas": [0.0]}, "sigmas must be"),
])
def test_bad_configs_fail_before_anything_is_written(evaluated, asset, cfg, message):
    root, instance, res, _ = evaluated
    name = asset.key.path[-1]
    path = root / name / "model=toy-vit.s0" / "dataset=toyworld" / "part-0.parquet"
    before = path.read_bytes() if path.exists() else None
    result = materialize([asset], instance=instance, partition_key=KEY, resources=res, raise_on_error=False,
                         run_config={"ops": {name: {"config": cfg}}})
    assert not result.success
    from pipelines.cli import root_cause

    failure = next(e for e in result.all_events if e.is_step_failure)
    assert message in root_cause(failure.step_failure_data.error)
    assert (path.read_bytes() if path.exists() else None) == before
