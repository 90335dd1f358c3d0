"""evaluation_table: every model × dataset × metric of the three methods in one long, polars-friendly Parquet.

Columns: model, dataset, metric, method (saliency method, attack, bank or branch; "" if none), level (ε or noise s in
1/255, or the number of texts k; null if none), value, direction (↑ higher is better / ↓), source (the asset).
Accuracies are fractions everywhere. It reads whatever partitions are materialised, so a new model or dataset
appears as soon as its evaluations exist; its automation condition re-materialises it when any upstream partition
changes (assets/automation.py REFRESH, with the `automation` sensor, on by default under `cliplab ui`).
"""

import polars as pl
from dagster import AssetExecutionContext, AssetKey, MaterializeResult, MetadataValue, asset

from assets._report import png_metadata, table_metadata
from cliplab import plots
from cliplab.errors import CliplabError
from resources.store import ArtifactStore

COLUMNS = {"model": pl.String, "dataset": pl.String, "metric": pl.String, "method": pl.String, "level": pl.Float64,
           "value": pl.Float64, "direction": pl.String, "source": pl.String}
SOURCES = ("zero_shot_predictions", "zero_shot_robustness", "localisation_eval", "explanation_robustness", "roar",
           "mi_summary", "head_span_replacement")
# the asset that writes each table (head_spans writes its replacement evaluation beside it)
WRITER = {"head_span_replacement": "head_spans"}
LOCALISATION = {"pointing_game": "↑", "energy_pointing_game": "↑", "pixel_accuracy": "↑", "miou": "↑",
                "average_precision": "↑"}
# what the side-by-side summary shows: (metric, method, level) → column title
SUMMARY = {
    ("clean_top1", "", None): "clean top-1 ↑",
    ("robust_top1", "apgd-ce+apgd-t", 1.0): "robust top-1 @1/255 ↑",
    ("energy_pointing_game", "simple_gradient", None): "SG energy PG ↑",
    ("ssim", "grad_cam", 4.0): "Grad-CAM SSIM @4/255 ↑",
    ("roar_area", "simple_gradient", None): "SG ROAR area ↑",
    ("mi_auc", "kmeans", None): "MI AUC (k-means) ↑",
    ("head_span_replacement_top1", "image_descriptions_general", 5.0): "head-span replacement top-1 (5 texts) ↑",
}


def _rows(store: ArtifactStore, asset: str) -> pl.DataFrame | None:
    try:
        df = store.scan(asset).collect()
    except CliplabError:
        return None  # no partition of it materialised yet
    return df.with_columns(pl.col("model").cast(pl.String), pl.col("dataset").cast(pl.String))


def _long(df: pl.DataFrame, metric, value, direction: str, source: str, method=None, level=None) -> pl.DataFrame:
    return df.select(
        "model", "dataset",
        (pl.lit(metric) if isinstance(metric, str) else metric).alias("metric"),
        (pl.lit("") if method is None else method).cast(pl.String).alias("method"),
        (pl.lit(None) if level is None else level).cast(pl.Float64).alias("level"),
        value.cast(pl.Float64).alias("value"), pl.lit(direction).alias("direction"), pl.lit(source).alias("source"))


def collect_metrics(store: ArtifactStore) -> pl.DataFrame:
    """The long table from every materialised partition of the evaluation, mutual-knowledge and head-span assets."""
    parts = []
    if (df := _rows(store, "zero_shot_predictions")) is not None:
        top1 = df.group_by("model", "dataset").agg(pl.col("correct").mean().alias("v"))
        parts.append(_long(top1, "clean_top1", pl.col("v"), "↑", "zero_shot_predictions"))
    if (df := _rows(store, "zero_shot_robustness")) is not None:
        robust = df.filter(pl.col("attack") != "clean")
        parts.append(_long(robust, "robust_top1", pl.col("accuracy"), "↑", "zero_shot_robustness",
                           method=pl.col("attack"), level=pl.col("eps_255")))
    if (df := _rows(store, "localisation_eval")) is not None:
        for m, d in LOCALISATION.items():
            parts.append(_long(df, m, pl.col(m), d, "localisation_eval", method=pl.col("method")))
    if (df := _rows(store, "explanation_robustness")) is not None:
        parts.append(_long(df, "ssim", pl.col("ssim_mean"), "↑", "explanation_robustness", method=pl.col("method"),
                           level=pl.col("sigma_255")))
    if (df := _rows(store, "roar")) is not None:
        area = df.filter(pl.col("method") != "random").group_by("model", "dataset", "method").agg(pl.col("area").first())
        parts.append(_long(area, "roar_area", pl.col("area"), "↑", "roar", method=pl.col("method")))
    if (df := _rows(store, "mi_summary")) is not None:
        for branch in ("pca", "kmeans"):
            parts.append(_long(df, "mi_auc", pl.col(f"auc_{branch}"), "↑", "mi_summary", method=pl.lit(branch)))
    if (df := _rows(store, "head_span_replacement")) is not None:
        parts.append(_long(df, "head_span_replacement_top1", pl.col("top1"), "↑", "head_span_replacement",
                           method=pl.col("bank"), level=pl.col("k")))
    if not parts:
        return pl.DataFrame(schema=COLUMNS)
    return pl.concat([p.cast(COLUMNS) for p in parts]).sort("model", "dataset", "metric", "method", "level", nulls_last=True)


def summary(table: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, dataset), one column per headline metric (SUMMARY)."""
    out = table.select("model", "dataset").unique().sort("model", "dataset")
    for (metric, method, level), title in SUMMARY.items():
        sel = table.filter((pl.col("metric") == metric) & (pl.col("method") == method)
                           & (pl.col("level").is_null() if level is None else pl.col("level") == level))
        out = out.join(sel.select("model", "dataset", pl.col("value").alias(title)), on=["model", "dataset"], how="left")
    return out


@asset(code_version="1", deps=[AssetKey(WRITER.get(s, s)) for s in SOURCES], group_name="evaluation", kinds={"parquet"})
def evaluation_table(context: AssetExecutionContext, store: ArtifactStore) -> MaterializeResult:
    """Every model × dataset × metric (accuracy, robustness, localisation, SSIM, ROAR, MI AUC, head spans) in one table."""
    table = collect_metrics(store)
    path = store.write("evaluation_table", table)
    side = summary(table)
    context.log.info(f"evaluation_table: {table.height} values for {side.height} (model, dataset) pairs")
    meta = {"dagster/row_count": table.height, "models": sorted(set(table["model"])), "datasets": sorted(set(table["dataset"])),
            **table_metadata(path),
            "side by side": MetadataValue.md(plots.markdown_table(side) if side.height else "no evaluations materialised yet")}
    if side.height:
        meta.update(png_metadata(plots.metric_bars(side), store.figure_path("evaluation_table.png"), "models side by side"))
    return MaterializeResult(metadata=meta)
