"""More than one machine, chosen by configuration: the executor of every job.

Without CLIPLAB_CELERY_BROKER a run executes in its own process (`in_process_executor`: one model load per run).
With it, every step of a run is a Celery task on a Redis (or any Celery) broker, through `dagster-celery` (the
`deploy` extra): steps in the `gpu` pool go to the queue CLIPLAB_CELERY_GPU_QUEUE (default `gpu`, served by the
workers on GPU machines), every other step to Celery's `dagster` queue. The routing is here, once: the executor gives
each step of the `gpu` pool dagster-celery's `dagster-celery/queue` tag, so an asset needs nothing beyond its
`pool="gpu"`, and a step that sets its own queue tag keeps it.
Workers: `dagster-celery worker start -A dagster_celery.app -y celery.yaml -q gpu` (or `-q dagster`), with the same
environment as the runs (CLIPLAB_ARTIFACTS on the object store, the AWS variables, DAGSTER_HOME on Postgres).
"""

from __future__ import annotations

import os

GPU_POOL = "gpu"


def gpu_queue() -> str:
    return os.environ.get("CLIPLAB_CELERY_GPU_QUEUE", "gpu")


def celery_config() -> dict:
    """The Celery app's settings from the environment (the executor's and the workers' `-y` file alike)."""
    broker = os.environ["CLIPLAB_CELERY_BROKER"]
    return {"broker": broker, "backend": os.environ.get("CLIPLAB_CELERY_BACKEND") or broker}


def queue_for(step, default: str) -> str:
    """The Celery queue of an execution step: its own `dagster-celery/queue` tag, else the GPU queue for a step in the
    `gpu` pool, else `default`."""
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    if DAGSTER_CELERY_QUEUE_TAG in step.tags:
        return step.tags[DAGSTER_CELERY_QUEUE_TAG]
    return gpu_queue() if getattr(step, "pool", None) == GPU_POOL else default


def with_queue_tags(execution_plan):
    """`execution_plan` with the `dagster-celery/queue` tag of `queue_for` on every step in the `gpu` pool (a step's
    own tag wins), so that dagster-celery submits, and logs, each step to its queue."""
    from dagster._core.execution.plan.step import ExecutionStep
    from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

    def tagged(step):
        if isinstance(step, ExecutionStep) and step.pool == GPU_POOL and DAGSTER_CELERY_QUEUE_TAG not in step.tags:
            return step._replace(tags={**step.tags, DAGSTER_CELERY_QUEUE_TAG: gpu_queue()})
        return step

    steps = {handle: tagged(step) for handle, step in execution_plan.step_dict.items()}
    return execution_plan._replace(step_dict=steps, step_dict_by_key={step.key: step for step in steps.values()})


def _routed_celery_executor():
    from dagster import executor, multiple_process_executor_requirements
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor

    class PoolRoutedCeleryExecutor(CeleryExecutor):
        """dagster-celery's executor, with the GPU steps tagged for the GPU queue (`with_queue_tags`)."""

        def execute(self, plan_context, execution_plan):
            return super().execute(plan_context, with_queue_tags(execution_plan))

    @executor(name="celery", config_schema=CELERY_CONFIG, requirements=multiple_process_executor_requirements())
    def celery_pool_routed_executor(init_context):
        cfg = init_context.executor_config
        return PoolRoutedCeleryExecutor(broker=cfg.get("broker"), backend=cfg.get("backend"),
                                        config_source=cfg.get("config_source"), include=cfg.get("include"),
                                        retries=RetryMode.from_config(cfg["retries"]))

    return celery_pool_routed_executor


def executor_from_env():
    """The executor every job uses: in process, or Celery when CLIPLAB_CELERY_BROKER is set (see the module's doc)."""
    from dagster import in_process_executor

    if not os.environ.get("CLIPLAB_CELERY_BROKER"):
        return in_process_executor
    return _routed_celery_executor().configured(celery_config(), name="celery")
