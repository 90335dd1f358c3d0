"""The code location loads as `dagster dev` loads it: every job, sensor and asset resolves, names are unique."""

from dagster import AssetKey, Definitions


def test_definitions_load_like_the_webserver_loads_them():
    from pipelines.definitions import defs

    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs()} >= {"models", "checkpoints", "main", "analyse", "heads"}
    graph = defs.resolve_asset_graph()
    checkpoint = graph.get(AssetKey("checkpoint"))
    assert checkpoint.partitions_def.name == "model"  # partitioned by model alone
    model_users = [k for k in graph.get_all_asset_keys() if AssetKey("checkpoint") in graph.get(k).parent_keys]
    assert {"dataset_manifest", "class_text_embeddings", "zero_shot_predictions", "head_contributions"} <= {
        k.path[-1] for k in model_users}


def test_every_asset_is_materialisable_and_has_a_code_version():
    """No dependency on a key that nothing materialises (it would never update), and every asset has a
    code_version, so the UI can say when code changed under a materialisation."""
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    assert all(graph.get(k).is_materializable for k in keys), [k for k in keys if not graph.get(k).is_materializable]
    assert all(graph.get(k).code_version for k in keys), [k for k in keys if not graph.get(k).code_version]


def test_every_asset_has_owners_a_method_tag_and_the_automation_of_its_kind(monkeypatch):
    from dagster import MultiPartitionsDefinition

    from assets.automation import ANALYSIS, REFRESH
    from pipelines.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:interpretability"] and node.tags["method"] != "other", key
        if isinstance(node.partitions_def, MultiPartitionsDefinition):
            assert node.automation_condition == ANALYSIS, key
    tables = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).automation_condition == REFRESH}
    assert tables == {"evaluation_table", "model_comparison", "head_score_table"}
    assert graph.get(AssetKey("checkpoint")).automation_condition is None  # the sensor's: it preflights the entry
    assert graph.get(AssetKey("patch_features")).tags["device"] == "gpu"

    from assets.automation import owners

    monkeypatch.setenv("CLIPLAB_OWNERS", "ana@lab.org, team:vision")
    assert owners() == ["ana@lab.org", "team:vision"]
