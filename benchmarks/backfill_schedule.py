"""The backfill schedule over three models, under `cliplab ui` as a user runs it: one tick → one `main` run per
pending (model, dataset) pair → every pair fresh.

    python benchmarks/backfill_schedule.py [--steps 20] [--n-val 96] [--keep DIR]

Set-up (timed apart): a small toyworld and three toy CLIPs (`toy-vit.s0` from the built-in entry, `toy-vit.s1` and
`toy-vit.s2` as registry entries with their own seeds). `toy-vit.s0 × toyworld` is analysed, then its checkpoint is
retrained (new weights: its partition goes stale); s1 and s2 have weights and nothing else (missing). The two
sensors are stopped on the instance, so every run below is the schedule's. Then `cliplab ui` starts with
CLIPLAB_BACKFILL_CRON="* * * * *"; the table gives, per run the schedule launched, when it was requested, queued
and done relative to the tick, its state after, and the cross-model tables' model counts at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MODELS = ["toy-vit.s0", "toy-vit.s1", "toy-vit.s2"]

REGISTRY = """[datasets.toyworld]
kind = "toyworld"
split = "val"
mi_u = 7
dv_top = 7
robust_images = 8
roar_train_images = 128
roar_test_images = 64
robustness_images = 32

[models."toy-vit.s1"]
kind = "toy"
seed = 1
steps = {steps}

[models."toy-vit.s2"]
kind = "toy"
seed = 2
steps = {steps}
"""

# Weights for s1 and s2, new weights for s0 (more steps than its analysed ones): checkpoints only, no analyses.
CHECKPOINTS = """
import sys
from dagster import DagsterInstance
from pipelines.definitions import resources_from_env
from pipelines.runs import materialise
steps = int(sys.argv[1])
with DagsterInstance.get() as inst:
    res = resources_from_env()
    for model, n in (("toy-vit.s1", steps), ("toy-vit.s2", steps), ("toy-vit.s0", steps + 5)):
        assert materialise(inst, model, "toyworld", res, steps={model: n}, analyses=False).success, model
"""


def run(cmd: list[str], env: dict, what: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{what} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20, help="toy CLIP training steps per model")
    p.add_argument("--n-val", type=int, default=96)
    p.add_argument("--port", type=int, default=3231)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--keep", help="leave the instance and artifacts in this folder (default: a temporary one)")
    args = p.parse_args()
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="cliplab-backfill-"))
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "registry.toml").write_text(REGISTRY.format(steps=args.steps))
    env = {**os.environ, "DAGSTER_HOME": str(tmp / "dh"), "CLIPLAB_ARTIFACTS": str(tmp / "art"),
           "CLIPLAB_REGISTRY": str(tmp / "registry.toml"), "CLIPLAB_BACKFILL_CRON": "* * * * *",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    setup = run([str(BIN / "cliplab"), "run", "--steps", str(args.steps), "--n-train", "256", "--n-val", str(args.n_val)],
                env, "cliplab run (toy-vit.s0 × toyworld)")
    setup += run([sys.executable, "-c", CHECKPOINTS, str(args.steps)], env, "checkpoints of s1, s2 and new s0")
    for sensor in ("registry_sensor", "automation"):
        setup += run([sys.executable, "-m", "dagster", "sensor", "stop", sensor, "-w", "workspace.yaml"], env,
                     f"dagster sensor stop {sensor}")

    os.environ.update(env)
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter

    from assets.partitions import partition_key
    from pipelines.definitions import defs
    from pipelines.status import pending_main_pairs

    graph = defs.resolve_asset_graph()
    with DagsterInstance.get() as inst:
        before = pending_main_pairs(inst, graph, MODELS, ["toyworld"])
    print(f"set-up {setup:.0f} s; pending before the tick: "
          + "; ".join(f"{m}: {', '.join(sorted(s))}" for (m, _), s in sorted(before.items())))

    ui = subprocess.Popen([str(BIN / "cliplab"), "ui", "--port", str(args.port)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t_ui = time.time()
    try:
        with DagsterInstance.get() as inst:
            runs = []
            while time.time() - t_ui < args.timeout:
                time.sleep(5)
                runs = inst.get_runs(RunsFilter(job_name="main", tags={"dagster/schedule_name": "backfill_schedule"}))
                if runs and all(r.status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE,
                                             DagsterRunStatus.CANCELED) for r in runs):
                    break
            else:
                sys.exit(f"the schedule's runs did not finish within {args.timeout:.0f} s: {[r.status for r in runs]}")
            records = {r.dagster_run.run_id: r for r in inst.get_run_records(RunsFilter(run_ids=[r.run_id for r in runs]))}
            tick = min(r.create_timestamp.timestamp() for r in records.values())
            print(f"\ncliplab ui started → first tick's runs requested: {tick - t_ui:.0f} s "
                  f"(cron every minute; webserver, daemon and code server start first)")
            print(f"\n{'partition':26} {'requested s':>11} {'started s':>9} {'done s':>7} {'run s':>6} {'status':8} backfill tag")
            for rec in sorted(records.values(), key=lambda r: r.create_timestamp):
                run_ = rec.dagster_run
                print(f"{run_.tags['dagster/partition']:26} {rec.create_timestamp.timestamp() - tick:11.0f} "
                      f"{rec.start_time - tick:9.0f} {rec.end_time - tick:7.0f} {rec.end_time - rec.start_time:6.0f} "
                      f"{run_.status.value:8} {run_.tags.get('cliplab/backfill', '')}")
            done = max(r.end_time for r in records.values())
            after = pending_main_pairs(inst, graph, MODELS, ["toyworld"])
            print(f"\nfirst request → last run done: {done - tick:.0f} s; runs per pair: "
                  + ", ".join(f"{m}: {sum(r.tags['dagster/partition'] == partition_key(m, 'toyworld') for r in runs)}"
                              for m in MODELS)
                  + f"; pairs still pending after: {len(after)}")
            for table in ("evaluation_table", "model_comparison"):
                rec = inst.fetch_materializations(AssetKey(table), limit=1).records
                meta = rec[0].asset_materialization.metadata if rec else {}
                rows = meta.get("dagster/row_count")
                print(f"{table}: last materialised {rec[0].timestamp - tick:.0f} s after the tick, "
                      f"{rows.value if rows else '?'} rows" if rec else f"{table}: never materialised")
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
