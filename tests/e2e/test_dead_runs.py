"""A SIGKILLed run holding the `gpu` pool slot does not wedge the instance: the next run finds it dead, marks it
failed with a clear message, frees its slot and finishes (real processes, one DAGSTER_HOME with the project's
dagster.yaml). The UI's path: the run monitoring daemon asks CliplabRunLauncher whether a run's process lives."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from dagster import DagsterInstance, DagsterRunStatus

REPO = Path(__file__).resolve().parents[2]

STEP = textwrap.dedent("""
    import sys, time
    from dagster import DagsterInstance, materialize
    from assets.encodings import image_encodings
    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env
    from pipelines.liveness import reap_dead_runs, worker_tags
    from resources.datasets import DatasetCatalog

    root, hold = sys.argv[1], sys.argv[2] == "hold"
    if hold:  # a long GPU step: it holds the slot until killed
        def held(self, *args, **kwargs):
            print("holding the gpu slot", flush=True)
            time.sleep(3600)
            yield
        DatasetCatalog.image_batches = held
    instance = DagsterInstance.get()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    reaped = reap_dead_runs(instance, print)  # what `cliplab run` does first
    result = materialize([image_encodings], instance=instance, resources=resources_from_env(root), tags=worker_tags(),
                         partition_key=partition_key("toy-vit.s0", "toyworld"))
    print("reaped", reaped, "success", result.success, flush=True)
""")


def _claimed(instance) -> list:
    return list(instance.event_log_storage.get_concurrency_info("gpu").claimed_slots)


def test_a_killed_gpu_step_frees_its_slot_for_the_next_run(quick_root, tmp_path):
    src, _, _ = quick_root
    root = tmp_path / "artifacts"
    shutil.copytree(src, root)
    home = tmp_path / "dh"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")  # pools: one `gpu` slot
    env = {**os.environ, "DAGSTER_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    holder = subprocess.Popen([sys.executable, "-c", STEP, str(root), "hold"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding the gpu slot"
        with DagsterInstance.from_config(str(home)) as instance:
            assert len(_claimed(instance)) == 1
            dead = instance.get_runs()[0]
            holder.send_signal(signal.SIGKILL)  # as the OOM killer does
            holder.wait(timeout=30)
            assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.STARTED  # it cannot say it died

            # before: waits for the slot for ever (busy, deaf to SIGTERM); now: reaps the dead run and finishes
            nxt = subprocess.run([sys.executable, "-c", STEP, str(root), "go"], cwd=REPO, env=env, capture_output=True,
                                 text=True, timeout=600)
            assert nxt.returncode == 0, nxt.stderr[-2000:]
            assert f"reaped ['{dead.run_id}'] success True" in nxt.stdout
            run = instance.get_run_by_id(dead.run_id)
            assert run.status == DagsterRunStatus.FAILURE
            failure = [e for e in instance.all_logs(dead.run_id) if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
            assert failure and f"pid {holder.pid}" in failure[-1].message and "is gone" in failure[-1].message
            assert _claimed(instance) == []
    finally:
        if holder.poll() is None:
            holder.kill()


def test_the_launcher_tells_the_monitoring_daemon_whether_a_runs_process_lives(tmp_path):
    from dagster._core.events import EngineEventData
    from dagster._core.launcher import WorkerStatus

    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    with DagsterInstance.from_config(str(tmp_path)) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "CliplabRunLauncher" and launcher.supports_check_run_worker_health
        assert instance.run_monitoring_enabled
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        from pipelines.definitions import defs

        job = defs.resolve_job_def("checkpoints")
        for pid, status in ((os.getpid(), WorkerStatus.RUNNING), (gone.pid, WorkerStatus.FAILED)):
            run = instance.create_run_for_job(job_def=job)
            instance.report_engine_event(f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid))
            health = launcher.check_run_worker_health(run)
            assert health.status == status, health
        assert "is gone" in health.msg and str(gone.pid) in health.msg
        unknown = instance.create_run_for_job(job_def=job)  # no process recorded: never failed on a guess
        assert launcher.check_run_worker_health(unknown).status == WorkerStatus.RUNNING
