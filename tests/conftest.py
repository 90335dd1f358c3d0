"""Shared fixtures: a real Dagster instance and a real artifact root with the main job materialised once.

`quick_root`: the whole default graph with a toy CLIP trained for a few steps on a small toyworld
(plumbing: files, schemas, partitions). `trained_root` (slow): the default configuration, i.e. exactly
what `cliplab run` does on a fresh machine; the acceptance tests read it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def run_main(root: Path, steps: int | None = None, n_train: int | None = None, n_val: int | None = None, instance=None):
    """Execute the `main` job for toy-vit.s0 × toyworld into `root`; returns (result, instance, seconds)."""
    from dagster import DagsterInstance

    from assets.partitions import partition_key
    from pipelines.definitions import defs, resources_from_env

    # the default graph includes the head spans, whose text banks are published files: offline, from ../shared/data
    os.environ.setdefault("CLIPLAB_REFERENCE_DIR", str(SHARED / "data"))
    instance = instance or DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    ops = {}
    if steps is not None:
        ops["toy_clip"] = {"config": {"steps": steps}}
    if n_train is not None or n_val is not None:
        ops["toyworld"] = {"config": {k: v for k, v in (("n_train", n_train), ("n_val", n_val)) if v is not None}}
    t0 = time.perf_counter()
    result = defs.resolve_job_def("main").execute_in_process(
        instance=instance, partition_key=partition_key("toy-vit.s0", "toyworld"),
        run_config={"ops": ops}, resources=resources_from_env(str(root)),
    )
    return result, instance, time.perf_counter() - t0


@pytest.fixture(scope="session")
def quick_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick") / "artifacts"
    result, instance, _ = run_main(root, steps=4, n_train=240, n_val=96)
    assert result.success
    return root, instance, result


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    result, instance, seconds = run_main(root)
    assert result.success
    return root, instance, result, seconds
