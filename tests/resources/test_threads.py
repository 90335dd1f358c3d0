"""Torch threads per run: queued runs share the cores by the queue's limit; in-process runs keep the default."""

import os
from types import SimpleNamespace

import pytest
import torch
from dagster import DagsterRun, instance_for_test
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from threadpoolctl import threadpool_info, threadpool_limits

from cliplab.errors import CliplabError
from resources.models import ModelZoo
from resources.threads import available_cores, queue_limit, threads_per_run

QUEUE = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"},
         "concurrency": {"runs": {"max_concurrent_runs": 2}}}  # as the project's dagster.yaml
ORIGIN = RemoteJobOrigin(RemoteRepositoryOrigin(
    InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="pipelines.definitions")), "__repository__"), "main")


@pytest.mark.parametrize("requested, launched, limit, cores, expected", [
    (0, True, 2, 2, 1), (0, True, 2, 16, 8), (0, True, 3, 16, 5), (0, True, 4, 2, 1),  # cores shared, at least 1
    (0, False, 2, 16, None),  # cliplab run / tests: the process's default
    (0, True, 1, 16, None), (0, True, None, 16, None), (0, True, -1, 16, None),  # one run at a time, or no limit known
    (3, False, None, 16, 3), (3, True, 2, 16, 3),  # CLIPLAB_TORCH_THREADS wins
])
def test_threads_per_run(requested, launched, limit, cores, expected):
    assert threads_per_run(requested, launched, limit, cores) == expected


def test_a_queued_run_gets_its_share_and_an_in_process_run_keeps_the_default(monkeypatch):
    before, pools = torch.get_num_threads(), [pool["num_threads"] for pool in threadpool_info()]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after the test
        monkeypatch.setenv(var, "x")
        monkeypatch.delenv(var)
    zoo = ModelZoo()
    try:
        with instance_for_test(overrides=QUEUE) as instance, threadpool_limits(limits=None):  # BLAS pools restored
            assert queue_limit(instance) == 2
            with instance_for_test(overrides={"run_coordinator": {  # runs launched at once, no queue
                    "module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}}) as plain:
                assert queue_limit(plain) is None
            torch.set_num_threads(2)
            zoo.setup_for_execution(SimpleNamespace(instance=instance, log=None,
                                                    dagster_run=DagsterRun(job_name="main")))
            assert torch.get_num_threads() == 2  # not launched through the queue: untouched
            zoo.setup_for_execution(SimpleNamespace(instance=instance, log=None,
                                                    dagster_run=DagsterRun(job_name="main", remote_job_origin=ORIGIN)))
            share = max(1, available_cores() // 2)
            assert torch.get_num_threads() == share and os.environ["OPENBLAS_NUM_THREADS"] == str(share)
            assert {pool["num_threads"] for pool in threadpool_info()} == {share}  # numpy's OpenBLAS included
    finally:
        torch.set_num_threads(before)
    assert [pool["num_threads"] for pool in threadpool_info()] == pools  # the rest of the suite is unaffected


def test_cliplab_torch_threads_is_checked(monkeypatch):
    from pipelines.definitions import resources_from_env

    monkeypatch.setenv("CLIPLAB_TORCH_THREADS", "3")
    assert resources_from_env()["zoo"].torch_threads == 3
    for bad in ("-1", "two", "1.5"):
        monkeypatch.setenv("CLIPLAB_TORCH_THREADS", bad)
        with pytest.raises(CliplabError, match="CLIPLAB_TORCH_THREADS"):
            resources_from_env()
