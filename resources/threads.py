"""CPU threads for a run's torch and BLAS work when the instance runs several runs at once.

Every run process would take one torch thread and one BLAS thread per core. With `max_concurrent_runs: 2`
(dagster.yaml) on a 2-core machine that is 4 spinning OpenMP threads on 2 cores: measured with
`benchmarks/backfill_schedule.py`, two toy `main` runs side by side took 442 s and 455 s where one alone took 70 s
(166 s and 176 s with the share). A run launched through the run queue (UI, schedule, sensors) therefore gets
cores / max_concurrent_runs threads; `cliplab run` and other in-process executions keep the process's default.
CLIPLAB_TORCH_THREADS (> 0) sets the number for every run.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads_per_run(requested: int, launched: bool, max_concurrent_runs: int | None, cores: int) -> int | None:
    """Torch threads for one run, or None to leave the process's default.

    requested: CLIPLAB_TORCH_THREADS (0 = decide); launched: the run came through the run queue (it has a code
    location origin); max_concurrent_runs: the queue's limit (None or < 1: no limit known)."""
    if requested > 0:
        return requested
    if not launched or not max_concurrent_runs or max_concurrent_runs <= 1:
        return None
    return max(1, cores // max_concurrent_runs)


def limit_cpu_threads(threads: int) -> None:
    """This process's torch threads and BLAS/OpenMP pools (numpy, scikit-learn, scipy) to `threads`: the pools loaded
    already through threadpoolctl, later ones through the variables they read when they load."""
    import torch
    from threadpoolctl import threadpool_limits

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    threadpool_limits(threads)


def queue_limit(instance) -> int | None:
    """max_concurrent_runs of the instance's run queue (`concurrency: runs:`, or the queued coordinator's own config:
    the instance merges both), None without a queue."""
    from dagster._core.run_coordinator import QueuedRunCoordinator

    if not isinstance(instance.run_coordinator, QueuedRunCoordinator):
        return None
    return instance.get_concurrency_config().run_queue_config.max_concurrent_runs
