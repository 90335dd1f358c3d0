"""The two partition dimensions: `model` (dynamic: checkpoints appear at run time) × `dataset` (dynamic)."""

import warnings

from dagster import (
    AssetDep,
    BetaWarning,
    DynamicPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    MultiToSingleDimensionPartitionMapping,
)

from resources.registry import validate_key

model_partitions = DynamicPartitionsDefinition(name="model")
dataset_partitions = DynamicPartitionsDefinition(name="dataset")
model_dataset = MultiPartitionsDefinition({"model": model_partitions, "dataset": dataset_partitions})

with warnings.catch_warnings():  # the mapping is beta in Dagster 1.13; it is what model × dataset → model needs
    warnings.simplefilter("ignore", BetaWarning)
    by_model = MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")
# Every (model, dataset) asset that runs the model depends on that model's `checkpoint` partition: new or changed
# weights (a new data version) make it stale, and the UI draws checkpoint → analyses.
MODEL_CHECKPOINT = AssetDep("checkpoint", partition_mapping=by_model)


def partition_key(model: str, dataset: str) -> MultiPartitionKey:
    """The multi-partition key for (model, dataset); Dagster prints it as "<dataset>|<model>"."""
    return MultiPartitionKey({"model": validate_key(model, "model key"), "dataset": validate_key(dataset, "dataset key")})


def model_and_dataset(context) -> tuple[str, str]:
    """(model, dataset) of the running partition, validated: Dagster accepts any string a user types."""
    keys = context.partition_key.keys_by_dimension
    return validate_key(keys["model"], "model key"), validate_key(keys["dataset"], "dataset key")
