"""registry_sensor: new registry models, pipeline checkpoints and datasets become partitions and runs."""

import textwrap

from dagster import AssetMaterialization, DagsterInstance, build_sensor_context, evaluate_automation_conditions

from assets.partitions import partition_key
from pipelines.definitions import defs
from pipelines.sensors import registry_sensor
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo


def test_sensor_adds_partitions_and_requests_each_new_pair(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
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
    # the built-in AFT variants are trained on request (`cliplab run`), not by the sensor
    assert sorted(added) == ["toy-vit.s7", "vit-b-32.openai"]
    runs = sorted((r.job_name, r.partition_key) for r in result.run_requests)
    # toy-vit.s7 has weights (its checkpoint folder): every analysis (`main`); toy-vit.s0 has none yet: its
    # checkpoint; vit-b-32's weights are not cached and there is no network: no run
    assert runs == [("checkpoints", "toy-vit.s0"), ("main", "toyworld|toy-vit.s7")]
    # once the partitions exist, the next tick adds none and repeats only run keys already used (the daemon skips them)
    instance.add_dynamic_partitions("model", added)
    again = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    assert not again.dynamic_partitions_requests
    assert {r.run_key for r in again.run_requests} == {r.run_key for r in result.run_requests}


def test_entries_that_cannot_work_are_reported_and_get_no_run(tmp_path, monkeypatch, capfd):
    """A missing file, an unknown architecture, an invalid entry: reported on the tick, no run, and the valid
    entries still run; a fixed entry gets a new run key (the spent one would never run again)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    good = tmp_path / "good.safetensors"
    import torch
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(good))
    reg = tmp_path / "registry.toml"
    entries = textwrap.dedent(f"""
        [models."mine.missing"]
        kind = "checkpoint"
        arch = "ViT-B-32"
        path = "{tmp_path / 'nowhere.safetensors'}"

        [models."mine.badarch"]
        kind = "checkpoint"
        arch = "ViT-Q-99"
        path = "{good}"

        [models."mine.invalid"]
        kind = "aft"
        base = "toy-vit.s0"
        data = "toyworld"
        eps = -1.0

        [models."toy-vit.s3"]
        kind = "toy"
        seed = 3
    """)
    reg.write_text(entries)
    instance = DagsterInstance.ephemeral()
    resources = {"zoo": ModelZoo(registry=str(reg), artifacts_root=str(tmp_path)),
                 "datasets": DatasetCatalog(registry=str(reg), artifacts_root=str(tmp_path))}
    result = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    runs = {r.partition_key: r.run_key for r in result.run_requests}
    assert set(runs) == {"toy-vit.s0", "toy-vit.s3"}  # not the built-in AFT variants: they are trained on request
    log = capfd.readouterr().err  # the tick's log
    assert "'mine.missing'" in log and "does not exist" in log and "'path'" in log
    assert "'mine.badarch'" in log and "unknown architecture 'ViT-Q-99'" in log
    assert "'mine.invalid'" in log and "eps" in log
    added = [k for r in result.dynamic_partitions_requests for k in r.partition_keys]
    assert "mine.invalid" not in added and "mine.missing" in added  # only valid entries become partitions
    # fixed: the file appears; the entry's run key is new, so the daemon runs it
    reg.write_text(entries.replace(str(tmp_path / "nowhere.safetensors"), str(good)))
    again = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    assert "mine.missing" in {r.partition_key for r in again.run_requests}
    reg.write_text(entries.replace("seed = 3", "seed = 4"))  # a changed entry is a new request too
    changed = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    assert {r.partition_key: r.run_key for r in changed.run_requests}["toy-vit.s3"] != runs["toy-vit.s3"]


def test_new_weights_under_a_key_request_its_analyses_again(tmp_path):
    from dagster import AssetMaterialization

    reg = tmp_path / "registry.toml"
    reg.write_text("")
    (tmp_path / "checkpoints/toy-vit.s7").mkdir(parents=True)
    (tmp_path / "checkpoints/toy-vit.s7/open_clip_config.json").write_text("{}")
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s7"])
    resources = {"zoo": ModelZoo(registry=str(reg), artifacts_root=str(tmp_path)),
                 "datasets": DatasetCatalog(registry=str(reg), artifacts_root=str(tmp_path))}

    def analyse_key():
        result = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
        return [r.run_key for r in result.run_requests if r.partition_key == "toyworld|toy-vit.s7"]

    first = analyse_key()
    instance.report_runless_asset_event(AssetMaterialization("checkpoint", partition="toy-vit.s7"))
    second = analyse_key()
    assert len(first) == len(second) == 1 and first != second
    assert second == analyse_key()  # and only once per materialisation


def test_checkpoints_dropped_into_the_watched_folder_become_models(tmp_path, monkeypatch):
    """A toy-architecture .safetensors (architecture read from its shapes), an open_clip local-dir folder and a file
    whose shapes fit two architectures (named by a .json beside it, else reported)."""
    import json

    import open_clip
    import torch
    from safetensors.torch import save_file

    from cliplab.toy.clip import build_toy_clip
    from resources.models import as_weights, save_checkpoint

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    watch = tmp_path / "drop"
    watch.mkdir()
    save_file({k: v.contiguous() for k, v in build_toy_clip().state_dict().items()}, str(watch / "My Toy.safetensors"))
    save_checkpoint(as_weights(build_toy_clip(), "toy-vit"), watch / "toy-folder")
    b32 = open_clip.create_model("ViT-B-32", pretrained=None)
    torch.save(b32.state_dict(), watch / "b32.pt")
    reg = tmp_path / "registry.toml"
    reg.write_text("")
    instance = DagsterInstance.ephemeral()
    zoo = ModelZoo(registry=str(reg), artifacts_root=str(tmp_path / "art"), watch_dir=str(watch))
    resources = {"zoo": zoo, "datasets": DatasetCatalog(registry=str(reg), artifacts_root=str(tmp_path / "art"))}
    result = registry_sensor(build_sensor_context(instance=instance, resources=resources, definitions=defs))
    added = {k for r in result.dynamic_partitions_requests for k in r.partition_keys}
    assert {"my-toy", "toy-folder"} <= added and "b32" not in added
    assert {("checkpoints", "my-toy"), ("checkpoints", "toy-folder")} <= {(r.job_name, r.partition_key) for r in result.run_requests}
    assert zoo.spec("my-toy").arch == "toy-vit"
    assert zoo.weights("toy-folder").arch == "toy-vit"  # verified load of the folder
    (watch / "b32.json").write_text(json.dumps({"arch": "ViT-B-32-quickgelu"}))
    assert zoo.spec("b32").arch == "ViT-B-32-quickgelu"


def test_an_analysed_pair_is_left_to_automation_which_reruns_it_on_new_weights(quick_root):
    """Every asset of `main` materialised for toy-vit.s0 × toyworld (parents first): the sensor launches no second
    `main` run and the automation conditions request nothing; new weights under the key: still no `main` run, and
    the automation conditions request every analysis of the pair at once, partitions of other pairs untouched. Its
    own instance: the shared quick instance is re-materialised (and made to fail) by other tests."""
    from pipelines.definitions import resources_from_env

    root, _, _ = quick_root
    res = resources_from_env(str(root))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0", "toy-vit.s1"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    graph = defs.resolve_asset_graph()
    main_assets = set(defs.resolve_job_def("main").asset_layer.selected_asset_keys)
    partitioned = {a for a in main_assets if graph.get(a).partitions_def is not None}
    instance.report_runless_asset_event(AssetMaterialization("toyworld"))
    for model in ("toy-vit.s0", "toy-vit.s1"):
        instance.report_runless_asset_event(AssetMaterialization("checkpoint", partition=model))
        for asset in graph.toposorted_asset_keys:
            if asset in main_assets:
                partition = str(partition_key(model, "toyworld")) if asset in partitioned else None
                instance.report_runless_asset_event(AssetMaterialization(asset, partition=partition))
    key = str(partition_key("toy-vit.s0", "toyworld"))

    def main_requests():
        result = registry_sensor(build_sensor_context(instance=instance, resources={"zoo": res["zoo"], "datasets": res["datasets"]},
                                                      definitions=defs))
        return {r.partition_key for r in result.run_requests if r.job_name == "main"}

    def automation_requests(cursor):
        result = evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        return {(k, str(p) if p is not None else None) for k in graph.get_all_asset_keys()
                for p in result.get_requested_partitions(k)}, result.cursor

    assert key not in main_requests()
    first, cursor = automation_requests(None)
    quiet, cursor = automation_requests(cursor)
    assert first == quiet == set()
    instance.report_runless_asset_event(AssetMaterialization("checkpoint", partition="toy-vit.s0"))
    assert key not in main_requests()
    requested, cursor = automation_requests(cursor)
    assert {k for k, p in requested if p == key} == partitioned
    assert {p for _, p in requested} <= {key, None}  # toy-vit.s1's partitions are not stale
    assert automation_requests(cursor)[0] == set()  # requested once, not again on the next tick
