"""Runs whose process is gone (SIGKILL, the OOM killer, a lost terminal): found, marked failed and their pool slots
freed, so a killed step never holds the `gpu` slot for ever and no later run waits on it.

Two paths find them: `cliplab run` reaps this host's dead runs before it starts (its own runs carry their pid as a
tag), and under `cliplab ui` the run monitoring daemon asks CliplabRunLauncher (dagster.yaml) about every started
run, whose worker announced its pid in the "Started process for run" event; `free_slots_after_run_end_seconds`
then frees the slots of runs that ended without giving them back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.launcher import CheckRunHealthResult, DefaultRunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import DagsterRun

PID_TAG, HOST_TAG = "cliplab/pid", "cliplab/host"
IN_PROGRESS = [DagsterRunStatus.STARTING, DagsterRunStatus.STARTED, DagsterRunStatus.CANCELING]


def worker_tags() -> dict[str, str]:
    """Tags for a run executed in this process: who to ask whether it is still alive."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def run_worker(instance: DagsterInstance, run: DagsterRun) -> tuple[str, int] | None:
    """(host, pid) of the process executing `run`: its tags, else the pid its worker reported (this host's launcher);
    None when not known yet."""
    if PID_TAG in run.tags and run.tags[PID_TAG].isdigit():
        return run.tags.get(HOST_TAG, ""), int(run.tags[PID_TAG])
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        data = entry.dagster_event.engine_event_data if entry.dagster_event else None
        pid = data.metadata.get("pid") if data else None
        if pid is not None and entry.message.startswith("Started process for run"):
            return socket.gethostname(), int(pid.value if hasattr(pid, "value") else pid)
    return None


def is_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def dead_message(run: DagsterRun, pid: int) -> str:
    return (f"run {run.run_id} died: its process (pid {pid}) is gone — killed, or out of memory. Marked failed "
            f"and its pool slots (`gpu`) freed; materialise the partition again.")


def reap_dead_runs(instance: DagsterInstance, log: Callable[[str], None] = lambda s: None) -> list[str]:
    """Mark this host's in-progress runs whose process is gone as failed and free their pool slots; their ids."""
    reaped = []
    for run in instance.get_runs(RunsFilter(statuses=IN_PROGRESS)):
        worker = run_worker(instance, run)
        if worker is None or worker[0] != socket.gethostname() or is_alive(worker[1]):
            continue
        message = dead_message(run, worker[1])
        instance.report_run_failed(run, message)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        log(message)
        reaped.append(run.run_id)
    return reaped


class CliplabRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (a process per run from the code server) that can tell the run monitoring daemon
    whether a run's process is still alive, which the default cannot."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        worker = run_worker(self._instance, run)
        if worker is None or worker[0] != socket.gethostname():  # cannot tell: never fail a run on a guess
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no process of this host recorded for the run")
        if is_alive(worker[1]):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(worker[1]))
        return CheckRunHealthResult(WorkerStatus.FAILED, dead_message(run, worker[1]), run_worker_id=str(worker[1]))
