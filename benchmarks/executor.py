"""One run of the `analyse` job as the UI launches it (a run worker executing the job's executor), per executor.

    python benchmarks/executor.py [--n-val 96]

The toy CLIP and a small toyworld are made first (not timed); then `analyse` (6 assets) for toy-vit.s0 × toyworld
runs through `dagster.execute_job` on a fresh instance, once with the multiprocess executor (a process per step,
Dagster's default) and once with the in-process executor (cliplab's): wall time and the per-step process overhead.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def analyse_job(executor: str):
    from dagster import Definitions, in_process_executor, multiprocess_executor

    from pipelines.definitions import defs
    from pipelines.jobs import analyse_job as job

    chosen = in_process_executor if executor == "in_process" else multiprocess_executor
    return Definitions(assets=defs.assets, jobs=[job], resources=defs.resources, executor=chosen).resolve_job_def("analyse")


def in_process():
    return analyse_job("in_process")


def multiprocess():
    return analyse_job("multiprocess")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n-val", type=int, default=96)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "artifacts"
        # before the code location is imported: its resources read these (and so do the step processes)
        os.environ["CLIPLAB_ARTIFACTS"] = str(root)
        os.environ["DAGSTER_HOME"] = tmp
        from dagster import DagsterInstance, execute_job, reconstructable

        from assets.partitions import partition_key
        from pipelines.definitions import resources_from_env
        from pipelines.runs import materialise

        instance = DagsterInstance.get()
        outcome = materialise(instance, "toy-vit.s0", "toyworld", resources_from_env(str(root)),
                              steps={"toy-vit.s0": args.steps}, toyworld={"n_train": 256, "n_val": args.n_val},
                              analyses=False)
        assert outcome.success
        rows = []
        for name, fn in (("multiprocess (a process per step)", multiprocess), ("in_process (cliplab)", in_process)):
            t0 = time.perf_counter()
            result = execute_job(reconstructable(fn), instance=instance, tags={"dagster/partition": partition_key("toy-vit.s0", "toyworld")})
            wall = time.perf_counter() - t0
            assert result.success, name
            steps = [e for e in result.all_events if e.event_type_value == "STEP_SUCCESS"]
            compute = sum(e.event_specific_data.duration_ms for e in steps) / 1000
            rows.append((name, len(steps), wall, compute))
        print(f"{'executor':36} {'steps':>5} {'wall s':>8} {'in steps s':>11} {'overhead s':>11}")
        for name, n, wall, compute in rows:
            print(f"{name:36} {n:5d} {wall:8.1f} {compute:11.1f} {wall - compute:11.1f}")


if __name__ == "__main__":
    main()
