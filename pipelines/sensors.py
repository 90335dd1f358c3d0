"""New checkpoints and datasets → new partitions, and runs of `analyse` for the pairs never materialised."""

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SensorResult, sensor

from assets.partitions import dataset_partitions, model_partitions, partition_key
from cliplab.errors import CliplabError
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo


@sensor(job_name="analyse", minimum_interval_seconds=60, default_status=DefaultSensorStatus.STOPPED)
def registry_sensor(context: SensorEvaluationContext, zoo: ModelZoo, datasets: DatasetCatalog) -> SensorResult:
    """Adds registry/checkpoint models and registry datasets as partitions; requests one run per new pair."""
    try:
        models, sets = zoo.known_keys(), datasets.known_keys()
    except CliplabError as e:
        return SensorResult(skip_reason=str(e))
    have_m = set(context.instance.get_dynamic_partitions(model_partitions.name))
    have_d = set(context.instance.get_dynamic_partitions(dataset_partitions.name))
    new_m, new_d = [m for m in models if m not in have_m], [d for d in sets if d not in have_d]
    runs = [
        RunRequest(run_key=f"{d}|{m}", partition_key=partition_key(m, d))
        for m in models for d in sets if m in new_m or d in new_d
    ]
    requests = []
    if new_m:
        requests.append(model_partitions.build_add_request(new_m))
    if new_d:
        requests.append(dataset_partitions.build_add_request(new_d))
    return SensorResult(run_requests=runs, dynamic_partitions_requests=requests)
