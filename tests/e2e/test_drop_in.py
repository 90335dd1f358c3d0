"""Acceptance (slow): under `cliplab ui`, a checkpoint folder dropped into CLIPLAB_CHECKPOINT_DIR is verified and
fully analysed (`main`) without a click. Prints the time from drop to done."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIPLAB = str(Path(sys.executable).parent / "cliplab")


@pytest.mark.slow
def test_a_dropped_checkpoint_is_analysed_without_a_click(tmp_path, cliplab_ui):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

    drop = tmp_path / "drop"
    drop.mkdir()
    # toyworld with the evaluation suite on small subsets (APGD alone takes 3.5 min on its default 64 images here)
    (tmp_path / "registry.toml").write_text(
        '[datasets.toyworld]\nkind = "toyworld"\nsplit = "val"\nmi_u = 7\ndv_top = 7\nrobust_images = 8\n'
        'roar_train_images = 128\nroar_test_images = 64\nrobustness_images = 32\n')
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "CLIPLAB_ARTIFACTS": str(tmp_path / "art"),
           "CLIPLAB_CHECKPOINT_DIR": str(drop), "CLIPLAB_REGISTRY": str(tmp_path / "registry.toml"),
           "HF_HUB_OFFLINE": "1"}
    # toyworld and a toy CLIP to copy, as a user's first `cliplab run` leaves them (small, for time)
    run = subprocess.run([CLIPLAB, "run", "--steps", "20", "--n-train", "256", "--n-val", "96"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    cliplab_ui(env, 3197)
    t0 = time.time()
    shutil.copytree(tmp_path / "art/checkpoints/toy-vit.s0", drop / "Toy Dropped")  # open_clip local-dir layout
    done = None
    with DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        while time.time() - t0 < 900 and done is None:
            time.sleep(5)
            runs = instance.get_runs(RunsFilter(job_name="main", tags={"dagster/partition": "toyworld|toy-dropped"}))
            failed = [r for r in runs if r.status == DagsterRunStatus.FAILURE]
            assert not failed, f"main run {failed[0].run_id} failed"
            if any(r.status == DagsterRunStatus.SUCCESS for r in runs):
                done = time.time() - t0
        assert done is not None, "no successful main run for the dropped checkpoint within 15 min"
        checkpoint = instance.get_runs(RunsFilter(job_name="checkpoints", tags={"dagster/partition": "toy-dropped"}))
        assert [r.status for r in checkpoint] == [DagsterRunStatus.SUCCESS]
    print(f"\ndropped checkpoint → checkpoint verified → main materialised: {done:.0f} s from drop to done")
    assert (tmp_path / "art/patch_features/model=toy-dropped/dataset=toyworld/part-0.parquet").is_file()
    assert (tmp_path / "art/evaluation_table/part-0.parquet").is_file()
