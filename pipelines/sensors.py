"""New checkpoints and datasets → new partitions; checkpoint runs for models without weights; analyses once they have them."""

from dagster import (
    AssetKey,
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
from pipelines.jobs import analyse_job, checkpoint_job
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo


@sensor(jobs=[checkpoint_job, analyse_job], minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def registry_sensor(context: SensorEvaluationContext, zoo: ModelZoo, datasets: DatasetCatalog) -> SensorResult:
    """Adds registry/checkpoint models and registry datasets as partitions. Requests a `checkpoints` run for each
    model without weights whose base (if any) has them, and one `analyse` run per (model, dataset) pair once the
    model has weights. Run keys make each request once."""
    try:
        models, sets = zoo.known_keys(), datasets.known_keys()
    except CliplabError as e:
        return SensorResult(skip_reason=str(e))
    have_m = set(context.instance.get_dynamic_partitions(model_partitions.name))
    have_d = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new_m, new_d = [m for m in models if m not in have_m], [d for d in sets if d not in have_d]
    verified = context.instance.get_materialized_partitions(AssetKey("checkpoint"))

    def has_weights(m: str) -> bool:
        return zoo.has_checkpoint(m) or (m in verified and zoo.spec(m).kind == "open_clip")

    runs = []
    for m in models:
        if has_weights(m):
            runs += [RunRequest(run_key=f"{d}|{m}", job_name=analyse_job.name, partition_key=partition_key(m, d)) for d in sets]
        elif not zoo.spec(m).base or has_weights(zoo.spec(m).base):
            runs.append(RunRequest(run_key=f"checkpoint|{m}", job_name=checkpoint_job.name, partition_key=m))
    requests = []
    if new_m:
        requests.append(model_partitions.build_add_request(new_m))
    if new_d:
        requests.append(dataset_partitions.build_add_request(new_d))
    return SensorResult(run_requests=runs, dynamic_partitions_requests=requests)


# evaluation_table refreshes when any of its upstream partitions changes: this sensor (on by default with the daemon, i.e. `cliplab ui`) re-materialises it
# whenever a partition of an evaluation, `mi_summary` or `head_span_replacement` changes.
evaluation_automation = AutomationConditionSensorDefinition(
    "evaluation_automation", target=AssetSelection.assets("evaluation_table"), default_status=DefaultSensorStatus.RUNNING)
