"""The two partition dimensions: `model` (dynamic: checkpoints appear at run time) × `dataset` (dynamic)."""

from dagster import DynamicPartitionsDefinition, MultiPartitionKey, MultiPartitionsDefinition

from resources.registry import validate_key

model_partitions = DynamicPartitionsDefinition(name="model")
dataset_partitions = DynamicPartitionsDefinition(name="dataset")
model_dataset = MultiPartitionsDefinition({"model": model_partitions, "dataset": dataset_partitions})


def partition_key(model: str, dataset: str) -> MultiPartitionKey:
    """The multi-partition key for (model, dataset); Dagster prints it as "<dataset>|<model>"."""
    return MultiPartitionKey({"model": validate_key(model, "model key"), "dataset": validate_key(dataset, "dataset key")})


def model_and_dataset(context) -> tuple[str, str]:
    """(model, dataset) of the running partition, validated: Dagster accepts any string a user types."""
    keys = context.partition_key.keys_by_dimension
    return validate_key(keys["model"], "model key"), validate_key(keys["dataset"], "dataset key")
