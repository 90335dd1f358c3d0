"""The checkpoint asset for AFT models and for bare image towers, materialised in process on the quick toyworld."""

import json
import re
import shutil
import textwrap
from pathlib import Path

import polars as pl
import pytest
import torch
from dagster import AssetKey, DagsterInstance

from cliplab.errors import CliplabError
from pipelines.definitions import resources_from_env
from pipelines.runs import checkpoint_chain, materialise
from resources.models import ModelZoo, read_sidecar, read_state_dict, sha256_file

AFT = """
    [models."toy-vit.s0.aft-t"]
    kind = "aft"
    base = "toy-vit.s0"
    data = "toyworld"
    steps = 3
    batch_size = 16
    pgd_steps = 2
    save_every = 2
    seed = 3
"""


@pytest.fixture
def root(toy_root):
    return toy_root


def registry(tmp_path: Path, text: str) -> str:
    path = tmp_path / "registry.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)


def failure_message(outcome) -> str:
    from pipelines.cli import root_cause

    failure = next(e for e in outcome.all_events if e.is_step_failure)
    return root_cause(failure.step_failure_data.error)


def test_aft_checkpoint_then_every_analysis_of_the_main_job(root, tmp_path, assert_figure, quick_evaluation):
    """An AFT partition trains from its base's checkpoint, saves a loadable open_clip folder with the base's text
    tower, and every analysis of the main job completes for it."""
    reg = registry(tmp_path, AFT)
    res = resources_from_env(str(root), reg)
    instance = DagsterInstance.ephemeral()
    outcome = materialise(instance, "toy-vit.s0.aft-t", "toyworld", res, analysis_config=quick_evaluation)
    assert outcome.success, failure_message(outcome)
    assert len(outcome.results) == 2  # the base's checkpoint is reused: one checkpoint run, then `main`

    meta = outcome.asset_materializations_for_node("checkpoint")[0].metadata
    folder = root / "checkpoints" / "toy-vit.s0.aft-t"
    side = read_sidecar(folder)["cliplab"]
    assert side["sha256"] == sha256_file(folder / "open_clip_model.safetensors") == meta["sha256"].value
    assert {k: side[k] for k in ("kind", "base", "data", "variant", "eps", "eta", "sigma", "steps", "seed")} == {
        "kind": "aft", "base": "toy-vit.s0", "data": "toyworld", "variant": "l1_huber", "eps": 4.0, "eta": 1.0,
        "sigma": 1.0, "steps": 3, "seed": 3}
    assert side["code_version"] and side["base_sha256"] == read_sidecar(root / "checkpoints" / "toy-vit.s0")["cliplab"]["sha256"]
    for name in ("clean top-1 before", "clean top-1 after", "attack distance before", "attack distance after"):
        assert 0 <= meta[name].value == side["metrics"][name] <= 2
    assert meta["eval images"].value == 96 and meta["training images/s"].value > 0
    assert assert_figure(meta, "loss curve")
    assert not (root / "checkpoints" / ".training" / "toy-vit.s0.aft-t").exists()  # resume state cleared
    event = instance.get_latest_materialization_event(AssetKey("checkpoint"))
    assert event.asset_materialization.tags["dagster/data_version"] == side["sha256"]

    # the text tower is the base's, bit for bit; the image tower moved
    base = read_state_dict(root / "checkpoints" / "toy-vit.s0" / "open_clip_model.safetensors")
    tuned = read_state_dict(folder / "open_clip_model.safetensors")
    assert base.keys() == tuned.keys()
    assert all(torch.equal(base[k], tuned[k]) for k in base if not k.startswith("visual."))
    assert any(not torch.equal(base[k], tuned[k]) for k in base if k.startswith("visual."))

    # it loads through the zoo like any model, and every (model, dataset) asset was written for it
    m = ModelZoo(registry=reg, artifacts_root=str(root), device="cpu").load("toy-vit.s0.aft-t")
    assert m.family == "vit" and m.spec.kind == "aft"
    store = res["store"]
    for asset in ("dataset_manifest", "zero_shot_predictions", "patch_features", "prominent_patches", "concept_clusters",
                  "class_descriptors", "visual_concept_descriptors", "mi_curves", "mi_summary", "head_spans",
                  "head_labels", "head_scores"):
        assert store.exists(asset, model="toy-vit.s0.aft-t", dataset="toyworld"), asset
    rows = store.read("patch_features", model="toy-vit.s0.aft-t", dataset="toyworld").select("image_id").collect()
    assert len(rows) == 96
    # the cross-model table now holds both models
    summary = pl.scan_parquet(store.glob("mi_summary"), hive_partitioning=True).collect()
    assert {"toy-vit.s0.aft-t"} <= set(summary["model"])


def test_checkpoint_chain_puts_bases_first(tmp_path):
    reg = registry(tmp_path, AFT + """
    [models."toy-vit.s0.aft-t.aft-u"]
    kind = "aft"
    base = "toy-vit.s0.aft-t"
    data = "toyworld"
    [models."loop-a"]
    kind = "aft"
    base = "loop-b"
    data = "toyworld"
    [models."loop-b"]
    kind = "aft"
    base = "loop-a"
    data = "toyworld"
    """)
    zoo = ModelZoo(registry=reg, artifacts_root=str(tmp_path))
    assert checkpoint_chain(zoo, "toy-vit.s0.aft-t.aft-u") == ["toy-vit.s0", "toy-vit.s0.aft-t", "toy-vit.s0.aft-t.aft-u"]
    with pytest.raises(CliplabError, match="cycle"):
        checkpoint_chain(zoo, "loop-a")


def test_builtin_aft_variants_are_the_paper_defaults_at_two_budgets():
    from resources.registry import aft_config, load_registry

    reg = load_registry(None)
    e4, e1 = aft_config(reg.model("toy-vit.s0.aft-e4")), aft_config(reg.model("toy-vit.s0.aft-e1"))
    assert (e4.variant, e4.eps, e4.eta, e4.sigma, e4.betas, e4.warmup_fraction) == ("l1_huber", 4, 1.0, 1.0, (0.9, 0.95), 0.07)
    assert e1.eps == 1 and reg.model("toy-vit.s0.aft-e4").base == "toy-vit.s0"
    assert (e4.steps, e4.batch_size, e4.lr) == (250, 128, 1e-5)  # 2 epochs of toyworld's 16,000 train images
    short = aft_config(reg.model("toy-vit.s0.aft-e1-short"))
    assert (short.eps, short.steps, short.lr, short.eta, short.betas) == (1, 40, 1e-4, 1.0, (0.9, 0.95))


@pytest.mark.parametrize("entry, message", [
    ('base = "nope"\ndata = "toyworld"', "unknown base model 'nope'"),
    ('base = "toy-vit.s0"\ndata = "toyworld"\neps = 0', "eps must be > 0"),
    ('base = "toy-vit.s0"\ndata = "toyworld"\neta = -1', "eta must be >= 0"),
    ('base = "toy-vit.s0"\ndata = "toyworld"\nvariant = "huber"', "variant must be one of"),
    ('base = "toy-vit.s0"\ndata = "toyworld"\nepsilon = 4', "unknown field 'epsilon'"),
    ('base = "toy-vit.s0"\ndata = "toyworld"\nsteps = "ten"', "'steps' must be of type int"),
    ('base = "toy-vit.s0"', "needs 'base' (a model key) and 'data'"),
])
def test_bad_aft_entries_fail_early_with_nothing_written(root, tmp_path, entry, message):
    reg = registry(tmp_path, f'[models."toy-vit.s0.bad"]\nkind = "aft"\n{entry}\n')
    before = sorted(p.name for p in (root / "checkpoints").iterdir())
    with pytest.raises(CliplabError, match=re.escape(message)):
        materialise(DagsterInstance.ephemeral(), "toy-vit.s0.bad", "toyworld", resources_from_env(str(root), reg))
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == before


def test_training_set_without_images_fails_before_training(root, tmp_path):
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    reg = registry(tmp_path, f"""
    [datasets."empty"]
    kind = "imagefolder"
    root = "{tmp_path / 'empty'}"
    [models."toy-vit.s0.aft-empty"]
    kind = "aft"
    base = "toy-vit.s0"
    data = "empty"
    """)
    outcome = materialise(DagsterInstance.ephemeral(), "toy-vit.s0.aft-empty", "toyworld", resources_from_env(str(root), reg))
    assert not outcome.success
    assert "empty" in failure_message(outcome) and "no images" in failure_message(outcome)
    assert not (root / "checkpoints" / "toy-vit.s0.aft-empty").exists()


def test_base_that_fails_verification_stops_the_fine_tune(root, tmp_path):
    from safetensors.torch import save_file

    state = read_state_dict(root / "checkpoints" / "toy-vit.s0" / "open_clip_model.safetensors")
    state.pop("visual.proj")
    save_file(state, str(tmp_path / "broken.safetensors"))
    reg = registry(tmp_path, f"""
    [models."toy-broken"]
    kind = "checkpoint"
    arch = "toy-vit"
    path = "{tmp_path / 'broken.safetensors'}"
    [models."toy-broken.aft"]
    kind = "aft"
    base = "toy-broken"
    data = "toyworld"
    """)
    outcome = materialise(DagsterInstance.ephemeral(), "toy-broken.aft", "toyworld", resources_from_env(str(root), reg))
    assert not outcome.success
    assert "does not match its architecture" in failure_message(outcome) and "visual.proj" in failure_message(outcome)
    assert not (root / "checkpoints" / "toy-broken").exists() and not (root / "checkpoints" / "toy-broken.aft").exists()


def test_group_variant_on_a_resnet_base_is_refused(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = open_clip.create_model("RN50", pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "rn50.safetensors"))
    reg = registry(tmp_path, f"""
    [models."rn50.random"]
    kind = "checkpoint"
    arch = "RN50"
    path = "{tmp_path / 'rn50.safetensors'}"
    [models."rn50.random.aft-group"]
    kind = "aft"
    base = "rn50.random"
    data = "toyworld"
    variant = "group"
    """)
    res = resources_from_env(str(tmp_path / "artifacts"), reg)
    from assets.aft.finetune import finetune_checkpoint

    class Log:
        def info(self, *_): pass

    class Ctx:
        log = Log()

    with pytest.raises(CliplabError, match="needs a ViT"):
        finetune_checkpoint(Ctx(), res["zoo"].spec("rn50.random.aft-group"), None, res["zoo"], res["datasets"], res["store"])


def test_a_bare_image_tower_combines_with_its_base(root, tmp_path):
    """The released robust-CLIP scripts save `model.visual.state_dict()` with torch.save: a .pt of plain tensors."""
    from cliplab.toy.clip import build_toy_clip

    torch.manual_seed(5)
    tower = build_toy_clip().visual
    torch.save(tower.state_dict(), tmp_path / "fare.pt")
    reg = registry(tmp_path, f"""
    [models."toy-vit.s0.fare"]
    kind = "checkpoint"
    tower = "visual"
    base = "toy-vit.s0"
    path = "{tmp_path / 'fare.pt'}"
    """)
    res = resources_from_env(str(root), reg)
    outcome = materialise(DagsterInstance.ephemeral(), "toy-vit.s0.fare", "toyworld", res, analyses=False)
    assert outcome.success, failure_message(outcome)
    saved = read_state_dict(root / "checkpoints" / "toy-vit.s0.fare" / "open_clip_model.safetensors")
    base = read_state_dict(root / "checkpoints" / "toy-vit.s0" / "open_clip_model.safetensors")
    assert all(torch.equal(saved[f"visual.{k}"], v) for k, v in tower.state_dict().items())
    assert all(torch.equal(saved[k], base[k]) for k in base if not k.startswith("visual."))
    side = json.loads((root / "checkpoints" / "toy-vit.s0.fare" / "open_clip_config.json").read_text())["cliplab"]
    assert side["tower"] == "visual" and side["base"] == "toy-vit.s0" and side["source_sha256"] == sha256_file(tmp_path / "fare.pt")
    assert res["zoo"].load("toy-vit.s0.fare").family == "vit"

    # a full CLIP state dict where an image tower is expected is refused by name
    torch.save(build_toy_clip().state_dict(), tmp_path / "full.pt")
    reg2 = registry(tmp_path, f'[models."x"]\nkind = "checkpoint"\ntower = "visual"\nbase = "toy-vit.s0"\npath = "{tmp_path / "full.pt"}"\n')
    with pytest.raises(CliplabError, match="unexpected tensors"):
        ModelZoo(registry=reg2, artifacts_root=str(root)).load("x")


def test_an_interrupted_fine_tune_resumes_from_its_saved_state(root, tmp_path, monkeypatch):
    """The asset saves training state every `save_every` steps; a run that dies after a save resumes there and ends
    with the weights of a run that never stopped."""
    import assets.aft.finetune as finetune

    entry = AFT.replace("steps = 3", "steps = 4")
    reg = registry(tmp_path, entry)
    straight_root = tmp_path / "straight"
    shutil.copytree(root, straight_root)
    straight = materialise(DagsterInstance.ephemeral(), "toy-vit.s0.aft-t", "toyworld",
                           resources_from_env(str(straight_root), reg), analyses=False)
    assert straight.success, failure_message(straight)

    real_save = finetune.save_state

    def save_then_die(folder, state, fingerprint):
        real_save(folder, state, fingerprint)
        if state.step == 2:
            raise RuntimeError("killed after the step-2 save")

    monkeypatch.setattr(finetune, "save_state", save_then_die)
    res = resources_from_env(str(root), reg)
    died = materialise(DagsterInstance.ephemeral(), "toy-vit.s0.aft-t", "toyworld", res, analyses=False)
    assert not died.success and "killed after the step-2 save" in failure_message(died)
    assert not (root / "checkpoints" / "toy-vit.s0.aft-t").exists()
    assert (root / "checkpoints" / ".training" / "toy-vit.s0.aft-t" / "state.safetensors").is_file()

    monkeypatch.setattr(finetune, "save_state", real_save)
    resumed = materialise(DagsterInstance.ephemeral(), "toy-vit.s0.aft-t", "toyworld", res, analyses=False)
    assert resumed.success, failure_message(resumed)
    assert resumed.asset_materializations_for_node("checkpoint")[0].metadata["resumed from step"].value == 2
    a = read_state_dict(straight_root / "checkpoints" / "toy-vit.s0.aft-t" / "open_clip_model.safetensors")
    b = read_state_dict(root / "checkpoints" / "toy-vit.s0.aft-t" / "open_clip_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (root / "checkpoints" / ".training" / "toy-vit.s0.aft-t").exists()
