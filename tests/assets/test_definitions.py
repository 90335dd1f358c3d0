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
