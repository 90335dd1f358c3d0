"""Bad input: a clear error early, naming the bad thing, and nothing half-written left behind."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from dagster import DagsterInstance, MultiPartitionKey
from PIL import Image

from assets.partitions import partition_key
from cliplab.errors import CliplabError
from pipelines.definitions import defs, resources_from_env
from resources.models import ModelZoo, read_state_dict

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def root(toy_root):
    return toy_root


def write_registry(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(textwrap.dedent(text))
    return path


def analyse(root: Path, registry: Path | None, model: str, dataset: str, run_config=None, instance=None):
    instance = instance or DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [model])
    instance.add_dynamic_partitions("dataset", [dataset])
    res = resources_from_env(str(root), registry=str(registry) if registry else None)
    return defs.resolve_job_def("analyse").execute_in_process(
        instance=instance, partition_key=MultiPartitionKey({"model": model, "dataset": dataset}), resources=res,
        run_config=run_config or {}, raise_on_error=False)


def failure_message(result) -> str:
    from pipelines.cli import root_cause

    failure = next(e for e in result.all_events if e.is_step_failure)
    return root_cause(failure.step_failure_data.error)


def image_folder(tmp_path: Path, corrupt=False, empty_class=False) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for cls in ("red apple", "blue car"):
        for i in range(3):
            p = root / cls / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(p)
    if corrupt:
        (root / "blue car" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage, not a jpeg")
    if empty_class:
        (root / "green tree").mkdir()
    return root


def test_folder_dataset_runs_end_to_end(root, tmp_path, monkeypatch):
    """The whole `analyse` job on an image folder; its images are checked (decoded in full) once, by
    dataset_manifest: the later assets read the stored manifest."""
    import resources.datasets

    checked = []
    check_images = resources.datasets.check_images
    monkeypatch.setattr(resources.datasets, "check_images", lambda paths, **kw: checked.append(len(paths)) or check_images(paths, **kw))
    reg = write_registry(tmp_path, f'[datasets.fruit]\nkind = "imagefolder"\nroot = "{image_folder(tmp_path)}"\n')
    result = analyse(root, reg, "toy-vit.s0", "fruit")
    assert result.success
    assert checked == [6] and len(result.asset_materializations_for_node("class_text_embeddings")) == 1
    preds = pl.read_parquet(root / "zero_shot_predictions/model=toy-vit.s0/dataset=fruit/part-0.parquet")
    assert preds.height == 6 and set(preds["class_name"]) == {"red apple", "blue car"}


def test_corrupt_image_skipped_and_listed(root, tmp_path):
    reg = write_registry(tmp_path, f'[datasets.fruit]\nkind = "imagefolder"\nroot = "{image_folder(tmp_path, corrupt=True)}"\n')
    result = analyse(root, reg, "toy-vit.s0", "fruit")
    assert result.success
    manifest = pl.read_parquet(root / "dataset_manifest/model=toy-vit.s0/dataset=fruit/part-0.parquet")
    assert manifest.height == 6 and "blue car/broken.jpg" not in manifest["image_id"].to_list()
    meta = result.asset_materializations_for_node("dataset_manifest")[0].metadata
    listed = meta["skipped files"].value
    assert [row["file"] for row in listed] == ["blue car/broken.jpg"]
    assert listed[0]["reason"].startswith("cannot decode: UnidentifiedImageError")


def test_corrupt_image_fails_the_partition_when_asked(root, tmp_path):
    reg = write_registry(tmp_path, f'[datasets.fruit]\nkind = "imagefolder"\nroot = "{image_folder(tmp_path, corrupt=True)}"\n')
    result = analyse(root, reg, "toy-vit.s0", "fruit", run_config={"ops": {"dataset_manifest": {"config": {"on_corrupt": "fail"}}}})
    assert not result.success
    assert "corrupt image" in failure_message(result) and "broken.jpg" in failure_message(result)
    assert not (root / "dataset_manifest").exists()


def test_empty_class_folder(root, tmp_path):
    reg = write_registry(tmp_path, f'[datasets.fruit]\nkind = "imagefolder"\nroot = "{image_folder(tmp_path, empty_class=True)}"\n')
    result = analyse(root, reg, "toy-vit.s0", "fruit")
    assert not result.success and "green tree" in failure_message(result)
    assert not (root / "dataset_manifest").exists()


def test_missing_dataset_folder(root, tmp_path):
    reg = write_registry(tmp_path, f'[datasets.gone]\nkind = "imagenet"\nroot = "{tmp_path / "nowhere"}"\n')
    result = analyse(root, reg, "toy-vit.s0", "gone")
    assert not result.success and str(tmp_path / "nowhere") in failure_message(result)
    assert not (root / "dataset_manifest").exists()


def test_unknown_model(root):
    result = analyse(root, None, "vit-x-99.nobody", "toyworld")
    assert not result.success
    assert "unknown model 'vit-x-99.nobody'" in failure_message(result)
    assert not (root / "dataset_manifest").exists()


def test_invalid_partition_keys():
    for bad in ("a|b", "a,b", "a/b", "has space", "x...y", "[x]", "", "UPPER"):
        with pytest.raises(CliplabError, match="invalid model key"):
            partition_key(bad, "toyworld")


def test_invalid_key_added_behind_our_back_fails_the_asset(root):
    instance = DagsterInstance.ephemeral()
    result = analyse(root, None, "bad key", "toyworld", instance=instance)
    assert not result.success and "invalid model key 'bad key'" in failure_message(result)


def test_pretrained_tag_without_network_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    reg = write_registry(tmp_path, '[models."vit-b-32.openai"]\nkind = "open_clip"\narch = "ViT-B-32"\npretrained = "openai"\n')
    zoo = ModelZoo(registry=str(reg), artifacts_root=str(tmp_path))
    import open_clip

    def no_download(*args, **kwargs):  # the hub's downloader retries for about a minute before it gives up
        raise AssertionError("a download was attempted without network")

    monkeypatch.setattr(open_clip, "download_pretrained", no_download)
    with pytest.raises(CliplabError) as err:
        zoo.load("vit-b-32.openai")
    msg = str(err.value)
    assert "'ViT-B-32'/'openai'" in msg and str(tmp_path / "hf") in msg and "no network" in msg


def test_unknown_pretrained_tag_lists_known_ones(tmp_path):
    reg = write_registry(tmp_path, '[models."vit-b-32.nope"]\nkind = "open_clip"\narch = "ViT-B-32"\npretrained = "nope"\n')
    with pytest.raises(CliplabError, match="unknown pretrained tag 'nope'.*openai"):
        ModelZoo(registry=str(reg), artifacts_root=str(tmp_path)).load("vit-b-32.nope")


@pytest.mark.parametrize("arch", ["ViT-B-32", "RN50"])
def test_local_checkpoints_of_real_architectures_load(tmp_path, arch):
    """Random-init real architectures saved as .safetensors and as a plain-state-dict .pt both load."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model(arch, pretrained=None)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pt")
    reg = write_registry(tmp_path, f"""
        [models."a.st"]
        kind = "checkpoint"
        arch = "{arch}"
        path = "{tmp_path / 'w.safetensors'}"
        [models."a.pt"]
        kind = "checkpoint"
        arch = "{arch}"
        path = "{tmp_path / 'w.pt'}"
    """)
    zoo = ModelZoo(registry=str(reg), artifacts_root=str(tmp_path), device="cpu")
    for key in ("a.st", "a.pt"):
        m = zoo.load(key)
        assert m.family == ("resnet" if arch == "RN50" else "vit")
        torch.testing.assert_close(m.model.state_dict()["logit_scale"], state["logit_scale"])


def test_checkpoint_whose_shapes_do_not_match_its_architecture(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    state = open_clip.create_model("ViT-B-32", pretrained=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b32.safetensors"))
    reg = write_registry(tmp_path, f'[models."wrong"]\nkind = "checkpoint"\narch = "ViT-B-16"\npath = "{tmp_path / "b32.safetensors"}"\n')
    with pytest.raises(CliplabError, match=r"does not match its architecture: 2 shape mismatches .*visual\.conv1\.weight: checkpoint \(768, 3, 32, 32\) vs architecture \(768, 3, 16, 16\)"):
        ModelZoo(registry=str(reg), artifacts_root=str(tmp_path)).load("wrong")


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Exploit()}, f)
    with pytest.raises(CliplabError, match="not unpickled"):
        read_state_dict(path)
    assert not _Exploit.marker.exists()


def test_corrupt_and_unknown_checkpoint_formats(tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(b"nope")
    with pytest.raises(CliplabError, match="not a readable safetensors file"):
        read_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(CliplabError, match="unknown format '.onnx'"):
        read_state_dict(tmp_path / "w.onnx")
    with pytest.raises(CliplabError, match="does not exist"):
        read_state_dict(tmp_path / "missing.pt")


KILLER = """
import os, signal, sys
import pyarrow.parquet as pq
from dagster import DagsterInstance
from assets.partitions import partition_key
from pipelines.definitions import defs, resources_from_env

calls = 0
original = pq.ParquetWriter.write_table
def write_then_die(self, *a, **k):
    global calls
    original(self, *a, **k)
    calls += 1
    if calls == 3:  # mid-write: two row groups of patch features on disk, more to come
        os.kill(os.getpid(), signal.SIGKILL)
pq.ParquetWriter.write_table = write_then_die

root = sys.argv[1]
inst = DagsterInstance.ephemeral()
inst.add_dynamic_partitions("model", ["toy-vit.s0"]); inst.add_dynamic_partitions("dataset", ["toyworld"])
defs.resolve_job_def("analyse").execute_in_process(
    instance=inst, partition_key=partition_key("toy-vit.s0", "toyworld"), resources=resources_from_env(root),
    op_selection=None, run_config={"ops": {"image_encodings": {"config": {"batch_size": 8}}}},
    asset_selection=None)
"""


def test_killed_materialisation_leaves_old_partition_then_rerun_completes(quick_root, tmp_path):
    src, _, _ = quick_root
    root = tmp_path / "artifacts"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("lancedb"))
    target = root / "patch_features/model=toy-vit.s0/dataset=toyworld/part-0.parquet"
    old = target.read_bytes()
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(root)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert target.read_bytes() == old  # the old partition, untouched
    assert list((root / ".staging").iterdir())  # the half-written file is staged, not in the tree
    assert pl.scan_parquet(root / "patch_features/**/*.parquet", hive_partitioning=True).collect().height == 96
    result = analyse(root, None, "toy-vit.s0", "toyworld")
    assert result.success
    assert not list((root / ".staging").iterdir())
    new = pl.read_parquet(target)
    assert new.height == 96 and new["image_id"].n_unique() == 96


@pytest.mark.parametrize("model", ["gone", "toy-vit.s0.aft-e1-short"])
def test_the_checkpoint_is_checked_before_any_image_is_decoded(root, tmp_path, model, monkeypatch):
    """dataset_manifest alone (as from the UI) on a model whose weights are not there: a missing checkpoint file, an
    AFT model never fine-tuned. It fails naming the checkpoint, before the folder's corrupt image is even decoded."""
    from dagster import materialize

    from assets import checkpoint, data
    from resources import folders

    folder = image_folder(tmp_path, corrupt=True)
    reg = write_registry(tmp_path, f'''
        [datasets.fruit]
        kind = "imagefolder"
        root = "{folder}"
        [models.gone]
        kind = "checkpoint"
        arch = "ViT-B-32"
        path = "{tmp_path / 'missing.safetensors'}"
        ''')
    decoded = []
    monkeypatch.setattr(folders, "decode_image", lambda path, *a: decoded.append(path))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", [model])
    instance.add_dynamic_partitions("dataset", ["fruit"])
    result = materialize([data.dataset_manifest, checkpoint.checkpoint.to_source_assets()[0]], instance=instance,
                         partition_key=partition_key(model, "fruit"), resources=resources_from_env(str(root), str(reg)),
                         selection=[data.dataset_manifest], raise_on_error=False,
                         run_config={"ops": {"dataset_manifest": {"config": {"on_corrupt": "fail"}}}})
    assert not result.success and decoded == []
    message = failure_message(result)
    assert "broken.jpg" not in message
    assert ("missing.safetensors does not exist (registry field 'path')" in message if model == "gone"
            else "has no checkpoint" in message and "materialise the `checkpoint` asset" in message), message
    assert not (root / "dataset_manifest" / f"model={model}").exists()
