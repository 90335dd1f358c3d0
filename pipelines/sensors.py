"""New checkpoints and datasets → new partitions; checkpoint runs for models without weights; analyses once they have them."""

import hashlib

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from assets.partitions import dataset_partitions, model_partitions, partition_key
from cliplab.errors import CliplabError
from pipelines.jobs import checkpoint_job, main_job
from pipelines.status import pending_main_pairs
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo
from resources.registry import BUILTIN_MODELS, TOY_MODEL_KEY

BUILTIN_VARIANTS = set(BUILTIN_MODELS) - {TOY_MODEL_KEY}


@sensor(jobs=[checkpoint_job, main_job], minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING)
def registry_sensor(context: SensorEvaluationContext, zoo: ModelZoo, datasets: DatasetCatalog) -> SensorResult:
    """Adds the registry file's models, checkpoints dropped into CLIPLAB_CHECKPOINT_DIR, the pipeline's own checkpoint
    folders and the registry's datasets as partitions (the built-in toy AFT variants only once trained: training
    them is asked for with `cliplab run`). Requests a `checkpoints` run for each model without weights whose base
    (if any) has them, and one `main` run per (model, dataset) pair once the model has weights and while an asset of
    `main` is missing for it (stale partitions are re-run by their automation condition, failed ones by
    `backfill_schedule` with backoff). An entry that cannot work here
    (invalid, missing file, weights neither cached nor downloadable) is reported in the tick's log and gets no run. Run keys carry the entry's content (a fixed entry
    is tried again) and the checkpoint's materialisation (new weights under a key are analysed again)."""
    problems: dict[str, str] = {}
    try:
        models, sets = zoo.known_keys(problems), datasets.known_keys(problems)
        models = [m for m in models if m not in BUILTIN_VARIANTS or zoo.has_checkpoint(m)]
    except CliplabError as e:
        return SensorResult(skip_reason=str(e))
    have_m = set(context.instance.get_dynamic_partitions(model_partitions.name))
    have_d = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new_m, new_d = [m for m in models if m not in have_m], [d for d in sets if d not in have_d]
    verified = context.instance.get_materialized_partitions(AssetKey("checkpoint"))

    def has_weights(m: str) -> bool:
        return zoo.has_checkpoint(m) or (m in verified and zoo.spec(m).kind == "open_clip")

    graph = context.repository_def.asset_graph
    analysed = [m for m in models if m in have_m and has_weights(m)]
    pending = pending_main_pairs(context.instance, graph, analysed, [d for d in sets if d in have_d])
    runs = []
    for m in models:
        spec = zoo.spec(m)
        if has_weights(m):
            version = _checkpoint_version(context.instance, m)
            runs += [RunRequest(run_key=f"{d}|{m}|{version}", job_name=main_job.name, partition_key=partition_key(m, d))
                     for d in sets if m not in have_m or d not in have_d or "missing" in pending.get((m, d), ())]
        elif not spec.base or has_weights(spec.base):
            if why := zoo.preflight(m):
                problems[m] = why
            else:
                runs.append(RunRequest(run_key=f"checkpoint|{m}|{_fingerprint(spec)}", job_name=checkpoint_job.name,
                                       partition_key=m))
    for key, why in sorted(problems.items()):
        context.log.warning(f"registry entry {key!r} not run: {why}")
    requests = []
    if new_m:
        requests.append(model_partitions.build_add_request(new_m))
    if new_d:
        requests.append(dataset_partitions.build_add_request(new_d))
    skip = "; ".join(f"{k}: {v}" for k, v in sorted(problems.items())) if problems and not runs else None
    return SensorResult(run_requests=runs, dynamic_partitions_requests=requests, skip_reason=skip)


def _fingerprint(spec) -> str:
    """Short hash of a registry entry's content."""
    return hashlib.sha256(repr(spec).encode()).hexdigest()[:12]


def _checkpoint_version(instance, model: str) -> str:
    """The storage id of the latest `checkpoint` materialisation of `model` ("0": weights dropped in by hand)."""
    records = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey("checkpoint"), asset_partitions=[model]), limit=1).records
    return str(records[0].storage_id) if records else "0"


# Evaluates the automation conditions of assets/automation.py (on by default with the daemon, i.e. `cliplab ui`).
automation = AutomationConditionSensorDefinition("automation", target=AssetSelection.all(),
                                                 default_status=DefaultSensorStatus.RUNNING)
