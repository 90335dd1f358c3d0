"""`pipelines.status`: each (model, dataset, asset) as materialised, stale, failed or missing, from the instance."""

import pytest
from dagster import AssetMaterialization, DagsterInstance, materialize

from assets import checkpoint, data
from assets.evaluation import robustness
from assets.partitions import partition_key
from pipelines.definitions import defs, resources_from_env
from pipelines.runs import materialise
from pipelines.status import partition_status


def _states(instance):
    return {r["asset"]: r["status"] for r in partition_status(instance, defs.resolve_asset_graph()) if r["model"] == "toy-vit.s0"}


def test_materialised_then_stale_then_failed(toy_root):
    res = resources_from_env(str(toy_root))
    instance = DagsterInstance.ephemeral()
    assert materialise(instance, "toy-vit.s0", "toyworld", res, analyses=False).success  # weights exist: verified
    key = partition_key("toy-vit.s0", "toyworld")
    source = checkpoint.checkpoint.to_source_assets()[0]
    assert materialize([data.dataset_manifest, data.class_text_embeddings, source], instance=instance,
                       partition_key=key, resources=res,
                       selection=[data.dataset_manifest, data.class_text_embeddings]).success
    states = _states(instance)
    assert states["dataset_manifest"] == states["class_text_embeddings"] == "materialised"
    assert states["patch_features"] == states["mi_curves"] == "missing"
    assert set(states.values()) == {"materialised", "missing"} and len(states) >= 25

    # new weights under the key: everything that reads the checkpoint is stale
    instance.report_runless_asset_event(AssetMaterialization("checkpoint", partition="toy-vit.s0"))
    states = _states(instance)
    assert states["dataset_manifest"] == states["class_text_embeddings"] == "stale"

    # a run that fails before writing: failed, not missing
    with pytest.raises(Exception):
        materialize([robustness.zero_shot_robustness], instance=instance, partition_key=key, resources=res,
                    run_config={"ops": {"zero_shot_robustness": {"config": {"images": -1}}}})
    assert _states(instance)["zero_shot_robustness"] == "failed"
