"""The backfill schedule: on a cron (CLIPLAB_BACKFILL_CRON, default 03:00 UTC daily; on by default under
`cliplab ui`), one `main` run per (model, dataset) partition that has something missing, stale or failed, for every
model with weights; failed partitions are retried with exponential backoff. The cross-model tables are in `main`,
so they refresh with it."""

from __future__ import annotations

import os
import time

from dagster import (
    AssetKey,
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES

from assets.partitions import dataset_partitions, model_partitions, partition_key
from pipelines.jobs import main_job
from pipelines.status import pending_main_pairs
from resources.models import ModelZoo

BACKFILL_CRON = os.environ.get("CLIPLAB_BACKFILL_CRON", "0 3 * * *")
RETRY_BASE_SECONDS = 15 * 60  # a failed partition waits 15 min, then 30, 60, ... before the next attempt
MAX_ATTEMPTS = 5


def failures_since_success(instance, key: str) -> tuple[int, float]:
    """(consecutive failed `main` runs of partition `key` since its last success, end time of the latest one)."""
    runs = instance.get_run_records(RunsFilter(job_name=main_job.name, tags={"dagster/partition": key},
                                               statuses=[DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE]),
                                    limit=MAX_ATTEMPTS + 1)
    n = 0
    for r in runs:  # newest first
        if r.dagster_run.status == DagsterRunStatus.SUCCESS:
            break
        n += 1
    return n, (runs[0].end_time or 0.0) if runs else 0.0


def backfill_requests(instance, graph, zoo: ModelZoo, now: float | None = None) -> tuple[list[RunRequest], list[str]]:
    """(run requests, skipped partitions with why) for every pair whose `main` assets are not all fresh."""
    now = time.time() if now is None else now
    verified = instance.get_materialized_partitions(AssetKey("checkpoint"))
    models = [m for m in instance.get_dynamic_partitions(model_partitions.name)
              if m in verified or zoo.has_checkpoint(m)]
    datasets = instance.get_dynamic_partitions(dataset_partitions.name)
    pending = pending_main_pairs(instance, graph, models, datasets)
    requests, skipped = [], []
    for (model, dataset), states in sorted(pending.items()):
        key = partition_key(model, dataset)
        # queued ones too (Dagster's IN_PROGRESS_RUN_STATUSES leaves them out): otherwise a pair waiting for a run slot
        # would be requested again on every tick
        if instance.get_run_records(RunsFilter(tags={"dagster/partition": str(key)}, statuses=NOT_FINISHED_STATUSES),
                                    limit=1):
            skipped.append(f"{dataset}|{model}: a run is already queued or running")
            continue
        failures, last = failures_since_success(instance, str(key))
        if failures >= MAX_ATTEMPTS:
            skipped.append(f"{dataset}|{model}: failed {failures} times in a row; fix it and run it by hand")
            continue
        wait = RETRY_BASE_SECONDS * 2 ** (failures - 1) if failures else 0
        if now - last < wait:
            skipped.append(f"{dataset}|{model}: failed {failures}×, next attempt in {wait - (now - last):.0f} s")
            continue
        requests.append(RunRequest(run_key=f"backfill|{key}|{int(now)}", partition_key=key,
                                   tags={"cliplab/backfill": ",".join(sorted(states))}))
    return requests, skipped


@schedule(cron_schedule=BACKFILL_CRON, job=main_job, default_status=DefaultScheduleStatus.RUNNING,
          execution_timezone="UTC", name="backfill_schedule")
def backfill_schedule(context: ScheduleEvaluationContext, zoo: ModelZoo):
    requests, skipped = backfill_requests(context.instance, context.repository_def.asset_graph, zoo)
    for line in skipped:
        context.log.warning(line)
    return requests or SkipReason("every model × dataset partition with weights is fresh" +
                                  (f"; held back: {'; '.join(skipped)}" if skipped else ""))
