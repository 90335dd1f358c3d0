"""evaluation_table: every partition's metrics in one long table, and its refresh when any upstream partition changes."""

import math

import polars as pl
import pytest
from dagster import AssetMaterialization, AssetSelection, DagsterInstance, evaluate_automation_conditions, materialize

from assets.evaluation.table import SUMMARY, collect_metrics, evaluation_table, summary
from assets.partitions import partition_key
from pipelines.definitions import defs, resources_from_env
from resources.store import ArtifactStore


def _write(store: ArtifactStore, asset: str, model: str, rows: dict):
    store.write(asset, pl.DataFrame(rows), model=model, dataset="toyworld")


@pytest.fixture
def store(tmp_path):
    """Two models' evaluation partitions with known values (what the evaluation assets write)."""
    s = ArtifactStore(root=str(tmp_path / "artifacts"))
    for model, correct, robust, energy, ssim4, area, auc in (("toy-vit.s0", [True, True, False, True], 0.05, 0.41, 0.62, 0.10, 1.9),
                                                            ("toy-vit.s0.aft-e1", [True, False, False, True], 0.20, 0.47, 0.71, 0.14, 1.7)):
        _write(s, "zero_shot_predictions", model, {"image_id": ["a", "b", "c", "d"], "correct": correct})
        _write(s, "zero_shot_robustness", model, {
            "eps_255": [1.0, 1.0, 1.0], "attack": ["clean", "apgd-ce", "apgd-ce+apgd-t"],
            "accuracy": [0.75, robust + 0.05, robust], "n_images": [4, 4, 4], "n_iter": [0, 100, 100]})
        _write(s, "localisation_eval", model, {
            "method": ["simple_gradient", "grad_cam"], "pointing_game": [0.5, 0.6], "energy_pointing_game": [energy, 0.3],
            "pixel_accuracy": [0.7, 0.6], "iou_foreground": [0.3, 0.2], "iou_background": [0.8, 0.7], "miou": [0.55, 0.45],
            "average_precision": [0.6, 0.5], "n_images": [4, 4], "n_empty": [0, 0], "tolerance": [15, 15]})
        _write(s, "explanation_robustness", model, {
            "method": ["grad_cam", "grad_cam"], "sigma_255": [1.0, 4.0], "ssim_mean": [0.9, ssim4],
            "ssim_ci_low": [0.85, ssim4 - 0.05], "ssim_ci_high": [0.95, ssim4 + 0.05], "n_images": [4, 4]})
        _write(s, "roar", model, {"method": ["simple_gradient", "simple_gradient", "random", "random"],
                                  "fraction": [0.1, 0.9, 0.1, 0.9], "accuracy": [0.6, 0.2, 0.7, 0.5],
                                  "area": [area, area, math.nan, math.nan]})
        _write(s, "mi_summary", model, {"auc_pca": [auc - 0.1], "auc_kmeans": [auc], "top1": [0.75]})
        _write(s, "head_span_replacement", model, {"bank": ["image_descriptions_general"] * 2, "k": [5, 10],
                                                   "top1": [0.7, 0.72]})
    return s


def test_every_metric_of_every_partition_in_one_long_table(store):
    table = collect_metrics(store)
    assert table.columns == ["model", "dataset", "metric", "method", "level", "value", "direction", "source"]
    assert set(table["model"]) == {"toy-vit.s0", "toy-vit.s0.aft-e1"} and set(table["direction"]) == {"↑"}

    def value(model, metric, method="", level=None):
        rows = table.filter((pl.col("model") == model) & (pl.col("metric") == metric) & (pl.col("method") == method)
                            & (pl.col("level").is_null() if level is None else pl.col("level") == level))
        assert rows.height == 1, (model, metric, method, level, rows)
        return rows["value"][0]

    assert value("toy-vit.s0", "clean_top1") == 0.75 and value("toy-vit.s0.aft-e1", "clean_top1") == 0.5  # fractions
    assert value("toy-vit.s0.aft-e1", "robust_top1", "apgd-ce+apgd-t", 1.0) == 0.20
    assert value("toy-vit.s0", "robust_top1", "apgd-ce", 1.0) == pytest.approx(0.10)
    assert table.filter(pl.col("metric") == "robust_top1")["method"].is_in(["clean"]).sum() == 0  # clean is clean_top1
    assert value("toy-vit.s0", "energy_pointing_game", "simple_gradient") == 0.41
    assert value("toy-vit.s0", "ssim", "grad_cam", 4.0) == 0.62
    assert value("toy-vit.s0", "roar_area", "simple_gradient") == 0.10
    assert table.filter((pl.col("metric") == "roar_area") & (pl.col("method") == "random")).height == 0
    assert value("toy-vit.s0", "mi_auc", "kmeans") == 1.9 and value("toy-vit.s0", "mi_auc", "pca") == pytest.approx(1.8)
    assert value("toy-vit.s0.aft-e1", "head_span_replacement_top1", "image_descriptions_general", 5.0) == 0.7

    side = summary(table)
    assert side.height == 2 and side.columns == ["model", "dataset", *SUMMARY.values()]
    aft = side.filter(pl.col("model") == "toy-vit.s0.aft-e1").row(0, named=True)
    assert aft["robust top-1 @1/255 ↑"] == 0.2 and aft["Grad-CAM SSIM @4/255 ↑"] == 0.71


def test_the_asset_writes_the_table_and_a_side_by_side_picture(store, tmp_path, assert_figure):
    res = resources_from_env(store.root)
    result = materialize([evaluation_table], resources=res, instance=DagsterInstance.ephemeral())
    assert result.success
    written = pl.read_parquet(store.table_path("evaluation_table"))
    assert written.equals(collect_metrics(store))
    meta = result.asset_materializations_for_node("evaluation_table")[0].metadata
    assert meta["models"].value == ["toy-vit.s0", "toy-vit.s0.aft-e1"]
    assert "toy-vit.s0.aft-e1" in meta["side by side"].value
    assert assert_figure(meta, "models side by side")


def test_with_nothing_materialised_the_table_is_empty_not_an_error(tmp_path):
    store = ArtifactStore(root=str(tmp_path / "empty"))
    assert collect_metrics(store).height == 0
    result = materialize([evaluation_table], resources=resources_from_env(store.root), instance=DagsterInstance.ephemeral())
    assert result.success


def test_a_new_upstream_partition_requests_a_refresh(store):
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    assert materialize([evaluation_table], resources=resources_from_env(store.root), instance=instance).success
    first = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=AssetSelection.assets("evaluation_table"))
    quiet = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=AssetSelection.assets("evaluation_table"),
                                           cursor=first.cursor)
    assert quiet.total_requested == 0
    instance.report_runless_asset_event(AssetMaterialization(
        "localisation_eval", partition=str(partition_key("toy-vit.s0", "toyworld"))))
    after = evaluate_automation_conditions(defs=defs, instance=instance, asset_selection=AssetSelection.assets("evaluation_table"),
                                           cursor=quiet.cursor)
    assert after.total_requested == 1
