"""Where every (model, dataset) partition stands, from the Dagster instance: materialised, stale, failed or missing.

stale: materialised, but an upstream partition it reads (its model's checkpoint, a (model, dataset) parent) was
materialised after it, or the asset's code_version changed since. failed: its latest run attempt failed.
"""

from __future__ import annotations

from dagster import AssetKey, DagsterInstance, MultiPartitionKey, MultiPartitionsDefinition

from assets.partitions import dataset_partitions, model_partitions

STATES = ("materialised", "stale", "failed", "missing")


def _latest(instance: DagsterInstance, key: AssetKey, partitions: list[str]) -> dict[str, object]:
    """partition → its latest materialisation event record (only the materialised ones)."""
    from dagster import AssetRecordsFilter

    out: dict[str, object] = {}
    cursor = None
    while True:
        page = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=partitions),
                                               limit=1000, cursor=cursor, ascending=False)
        for r in page.records:
            out.setdefault(r.partition_key, r)
        if not page.has_more:
            return out
        cursor = page.cursor


def partition_status(instance: DagsterInstance, graph, models: list[str] | None = None,
                     datasets: list[str] | None = None, assets: list[AssetKey] | None = None) -> list[dict]:
    """One row per (model, dataset, asset) of every asset partitioned by model × dataset: {model, dataset, asset,
    status, materialised_at (unix s or None)}. graph: the code location's asset graph (`defs.resolve_asset_graph()`);
    defaults: every model and dataset partition in the instance, every asset partitioned by model × dataset."""
    from dagster._core.storage.partition_status_cache import AssetPartitionStatus

    models = models if models is not None else instance.get_dynamic_partitions(model_partitions.name)
    datasets = datasets if datasets is not None else instance.get_dynamic_partitions(dataset_partitions.name)
    pairs = [(m, d) for m in models for d in datasets]
    keys = {pair: str(MultiPartitionKey({"model": pair[0], "dataset": pair[1]})) for pair in pairs}
    assets = sorted((k for k in (assets or graph.get_all_asset_keys())
                     if isinstance(graph.get(k).partitions_def, MultiPartitionsDefinition)), key=lambda k: k.path)
    latest = {k: _latest(instance, k, list(keys.values())) for k in assets}
    checkpoints = _latest(instance, AssetKey("checkpoint"), list(models)) if models else {}
    rows = []
    for asset in assets:
        node = graph.get(asset)
        failed = instance.get_status_by_partition(asset, list(keys.values()), node.partitions_def) or {}
        for (m, d), pk in keys.items():
            record = latest[asset].get(pk)
            if record is None:
                state = "failed" if failed.get(pk) == AssetPartitionStatus.FAILED else "missing"
                rows.append({"model": m, "dataset": d, "asset": asset.to_user_string(), "status": state,
                             "materialised_at": None})
                continue
            own = record.storage_id
            parents = [latest[p].get(pk) for p in node.parent_keys if p in latest]
            if AssetKey("checkpoint") in node.parent_keys:
                parents.append(checkpoints.get(m))
            code = (record.asset_materialization.tags or {}).get("dagster/code_version") if record.asset_materialization else None
            stale = any(p is not None and p.storage_id > own for p in parents) or (
                node.code_version is not None and code is not None and code != node.code_version)
            state = "failed" if failed.get(pk) == AssetPartitionStatus.FAILED else "stale" if stale else "materialised"
            rows.append({"model": m, "dataset": d, "asset": asset.to_user_string(), "status": state,
                         "materialised_at": record.timestamp})
    return rows


def pending_main_pairs(instance: DagsterInstance, graph, models: list[str], datasets: list[str]) -> dict[tuple[str, str], set[str]]:
    """(model, dataset) → the states (stale, failed, missing) of its `main` assets that are not materialised and fresh;
    pairs with everything fresh are left out."""
    from pipelines.jobs import main_job

    pending: dict[tuple[str, str], set[str]] = {}
    if not models or not datasets:
        return pending
    for row in partition_status(instance, graph, models, datasets, list(main_job.selection.resolve(graph))):
        if row["status"] != "materialised":
            pending.setdefault((row["model"], row["dataset"]), set()).add(row["status"])
    return pending
