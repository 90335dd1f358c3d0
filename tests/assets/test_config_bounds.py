"""Every numeric option of every asset has its range in the config schema (the UI's launchpad shows it), so a bad
value fails the step before anything is read or written, naming the option; the partition already there stays."""

import typing

import pytest
from dagster import Config, DagsterInstance, materialize

from assets.mutual import concepts, descriptors
from assets.mutual import knowledge as mutual
from assets.partitions import partition_key
from pipelines.definitions import defs, resources_from_env

# options whose whole range is meaningful: a resblock index counts from the end when negative
UNBOUNDED = {("DissectConfig", "layer")}


def _configs() -> list[type[Config]]:
    defs.resolve_asset_graph()  # every asset module imported
    seen, todo = [], list(Config.__subclasses__())
    while todo:
        c = todo.pop()
        if c.__module__.startswith("assets.") and c not in seen:
            seen.append(c)
        todo += c.__subclasses__()
    return seen


def test_every_numeric_option_has_a_range():
    configs = _configs()
    assert len(configs) >= 20
    unbounded = []
    for config in configs:
        for name, field in config.model_fields.items():
            if typing.get_origin(field.annotation) is None and field.annotation in (int, float):
                bounded = any(hasattr(m, "ge") or hasattr(m, "gt") for m in field.metadata)
                if not bounded and (config.__name__, name) not in UNBOUNDED:
                    unbounded.append(f"{config.__name__}.{name}")
    assert not unbounded, unbounded


@pytest.mark.parametrize("asset, option, value", [
    (descriptors.class_descriptors, "u", 0),  # before: an empty table over the good partition, then a KeyError downstream
    (concepts.concept_clusters, "L", 0),
    (mutual.visual_concept_descriptors, "temperature", -1.0),
    (mutual.mi_curves, "u", -5),
])
def test_a_bad_value_fails_before_anything_is_written(quick_root, asset, option, value):
    root, _, _ = quick_root
    name = asset.key.path[-1]
    path = root / name / "model=toy-vit.s0" / "dataset=toyworld" / "part-0.parquet"
    before = path.read_bytes()
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    result = materialize([asset], resources=resources_from_env(str(root)), instance=instance, raise_on_error=False,
                         partition_key=partition_key("toy-vit.s0", "toyworld"),
                         run_config={"ops": {name: {"config": {option: value}}}})
    assert not result.success
    error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
    while error.cause is not None:
        error = error.cause
    assert option in error.message and "greater than" in error.message
    assert path.read_bytes() == before
