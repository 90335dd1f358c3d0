"""registry_sensor: new registry models, pipeline checkpoints and datasets become partitions and runs."""

import textwrap

from dagster import DagsterInstance, build_sensor_context

from pipelines.definitions import defs
from pipelines.sensors import registry_sensor
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo


def test_sensor_adds_partitions_and_requests_each_new_pair(tmp_path):
    reg = tmp_path / "registry.toml"
    reg.write_text(textwrap.dedent("""
        [models."vit-b-32.openai"]
        kind = "open_clip"
        arch = "ViT-B-32"
        pretrained = "openai"
    """))
    (tmp_path / "checkpoints/toy-vit.s7").mkdir(parents=True)
    (tmp_path / "checkpoints/toy-vit.s7/open_clip_config.json").write_text("{}")
    resources = {"zoo": ModelZoo(registry=str(reg), artifacts_root=str(tmp_path)),
                  "datasets": DatasetCatalog(registry=str(reg), artifacts_root=str(tmp_path))}
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    ctx = build_sensor_context(instance=instance, resources=resources, definitions=defs)
    result = registry_sensor(ctx)
    added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
    assert sorted(added) == ["toy-vit.s0.aft-e1", "toy-vit.s0.aft-e1-short", "toy-vit.s0.aft-e4", "toy-vit.s0.aft-e4-short",
                             "toy-vit.s7", "vit-b-32.openai"]
    runs = sorted((r.job_name, r.partition_key) for r in result.run_requests)
    # toy-vit.s7 has weights (its checkpoint folder): analyses; vit-b-32 and toy-vit.s0 have none yet: their
    # checkpoints; the AFT variants wait for their base toy-vit.s0
    assert runs == [("analyse", "toyworld|toy-vit.s7"), ("checkpoints", "toy-vit.s0"), ("checkpoints", "vit-b-32.openai")]
    # once the partitions exist, the next tick adds none and repeats only run keys already used (the daemon skips them)
    instance.add_dynamic_partitions("model", added)
    again = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    assert not again.dynamic_partitions_requests
    assert {r.run_key for r in again.run_requests} == {r.run_key for r in result.run_requests}
