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
    assert sorted(added) == ["toy-vit.s7", "vit-b-32.openai"]
    keys = sorted(r.partition_key for r in result.run_requests)
    assert keys == ["toyworld|toy-vit.s7", "toyworld|vit-b-32.openai"]
    # once they exist, the next tick asks for nothing
    instance.add_dynamic_partitions("model", added)
    again = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    assert not again.run_requests and not again.dynamic_partitions_requests
