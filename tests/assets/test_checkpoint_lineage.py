"""New weights under an existing model key make that model's analyses stale (the checkpoint's sha256 is its data version)."""

import shutil

import torch
from dagster import AssetKey, DagsterInstance, materialize
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest
from safetensors.torch import save_file

from assets import checkpoint, data
from assets.partitions import partition_key
from cliplab.toy.clip import build_toy_clip
from pipelines.definitions import defs, resources_from_env
from pipelines.runs import materialise
from resources.models import sha256_file


def _save_random_toy(path, seed):
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in build_toy_clip().state_dict().items()}, str(path))


def test_new_weights_make_the_analyses_of_that_model_stale(quick_root, tmp_path):
    src, _, _ = quick_root
    root = tmp_path / "artifacts"
    shutil.copytree(src / "toyworld", root / "toyworld")
    weights = tmp_path / "mine.safetensors"
    _save_random_toy(weights, 1)
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[models."toy-file"]\nkind = "checkpoint"\narch = "toy-vit"\npath = "{weights}"\n')
    res = resources_from_env(str(root), str(reg))
    instance = DagsterInstance.ephemeral()
    key = partition_key("toy-file", "toyworld")

    def manifest_status():
        resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
        return resolver.get_status(AssetKey("dataset_manifest"), key)

    assert materialise(instance, "toy-file", "toyworld", res, analyses=False).success
    first = instance.get_latest_materialization_event(AssetKey("checkpoint")).asset_materialization
    stored = root / "checkpoints" / "toy-file" / "open_clip_model.safetensors"
    assert first.tags["dagster/data_version"] == sha256_file(stored)
    assert materialize([data.dataset_manifest, checkpoint.checkpoint.to_source_assets()[0]], instance=instance,
                       partition_key=key, resources=res, selection=[data.dataset_manifest]).success
    assert manifest_status() == StaleStatus.FRESH

    _save_random_toy(weights, 2)  # new weights, same key
    assert materialise(instance, "toy-file", "toyworld", res, retrain=True, analyses=False).success
    second = instance.get_latest_materialization_event(AssetKey("checkpoint")).asset_materialization
    assert second.tags["dagster/data_version"] != first.tags["dagster/data_version"]
    assert manifest_status() == StaleStatus.STALE


def test_a_failed_download_is_retried_with_backoff(tmp_path, monkeypatch):
    """A network failure (DownloadError) is retried by Dagster; bad input (CliplabError) is not."""
    import open_clip

    import assets.checkpoint as ckpt
    import resources.models as models
    from cliplab.errors import DownloadError

    weights = tmp_path / "b32.safetensors"
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    calls = []

    def flaky(arch, tag, cache_dir):
        calls.append(arch)
        if len(calls) <= 2:
            raise DownloadError("downloading pretrained weights failed: connection reset")
        return str(weights)

    monkeypatch.setattr(ckpt, "download_pretrained", flaky)
    monkeypatch.setattr(models, "download_pretrained", lambda *a: str(weights))
    monkeypatch.setattr(ckpt, "DOWNLOAD_RETRY_SECONDS", 0)
    reg = tmp_path / "registry.toml"
    reg.write_text('[models."vit-b-32.openai"]\nkind = "open_clip"\narch = "ViT-B-32"\npretrained = "openai"\n')
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["vit-b-32.openai"])
    result = materialize([checkpoint.checkpoint], instance=instance, partition_key="vit-b-32.openai",
                         resources=resources_from_env(str(tmp_path / "art"), str(reg)), selection=[checkpoint.checkpoint])
    assert result.success and len(calls) == 3
    assert sum(e.event_type_value == "STEP_RESTARTED" for e in result.all_events) == 2
