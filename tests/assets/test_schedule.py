"""backfill_schedule: one `main` run per pair with anything missing, stale or failed; failures back off."""

import shutil

from dagster import AssetMaterialization, DagsterRunStatus, build_schedule_context, instance_for_test
from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

from assets.partitions import partition_key
from pipelines.definitions import defs, resources_from_env
from pipelines.runs import materialise
from pipelines.schedules import RETRY_BASE_SECONDS, backfill_requests, backfill_schedule


def test_backfills_stale_and_missing_pairs_and_backs_off_failures(quick_root, tmp_path):
    src, _, _ = quick_root
    root = tmp_path / "artifacts"
    shutil.copytree(src, root)  # every asset of the quick toy partition on disk
    res = resources_from_env(str(root))
    with instance_for_test() as instance:  # a schedule context needs an instance it can reference
        _check(quick_root, root, res, instance)


def _check(quick_root, root, res, instance):
    src, _, _ = quick_root
    graph = defs.resolve_asset_graph()
    assert materialise(instance, "toy-vit.s0", "toyworld", res, analyses=False).success
    instance.add_dynamic_partitions("model", ["toy-vit.s5"])  # no weights: not the schedule's (the sensor's) job

    requests, _ = backfill_requests(instance, graph, res["zoo"])
    key = partition_key("toy-vit.s0", "toyworld")
    assert [r.partition_key for r in requests] == [key]  # nothing materialised in this instance yet: missing
    assert "missing" in requests[0].tags["cliplab/backfill"]

    # the schedule as the daemon evaluates it
    with build_schedule_context(instance=instance, resources=res, repository_def=defs.get_repository_def()) as ctx:
        data = backfill_schedule.evaluate_tick(ctx)
    assert [r.partition_key for r in data.run_requests] == [key]

    # a run of the pair waiting in the queue (or starting, or running): not requested again on the next tick
    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="pipelines.definitions"))
    origin = RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "main")  # a queued run names its code
    for status in (DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTED):
        waiting = instance.create_run_for_job(job_def=defs.resolve_job_def("main"), status=status,
                                              remote_job_origin=origin, tags={"dagster/partition": str(key)})
        held, skipped = backfill_requests(instance, graph, res["zoo"])
        assert not held and skipped == [f"{key}: a run is already queued or running"], (status, skipped)
        instance.delete_run(waiting.run_id)

    # one failed attempt: held back for RETRY_BASE_SECONDS, then requested again
    run = instance.create_run_for_job(job_def=defs.resolve_job_def("main"), tags={"dagster/partition": str(key)})
    instance.report_run_failed(run)
    end = instance.get_run_record_by_id(run.run_id).end_time
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.FAILURE
    held, skipped = backfill_requests(instance, graph, res["zoo"], now=end + 60)
    assert not held and "failed 1×" in skipped[0]
    again, _ = backfill_requests(instance, graph, res["zoo"], now=end + RETRY_BASE_SECONDS + 1)
    assert [r.partition_key for r in again] == [key]

    # every asset of `main` materialised for the pair, parents first: fresh, nothing to request; then new weights
    # under the key: stale, requested
    main_assets = set(defs.resolve_job_def("main").asset_layer.selected_asset_keys)
    for asset in graph.toposorted_asset_keys:
        if asset in main_assets and graph.get(asset).partitions_def is not None:
            instance.report_runless_asset_event(AssetMaterialization(asset, partition=str(key)))
    assert backfill_requests(instance, graph, res["zoo"], now=end + RETRY_BASE_SECONDS + 1)[0] == []
    instance.report_runless_asset_event(AssetMaterialization("checkpoint", partition="toy-vit.s0"))
    stale, _ = backfill_requests(instance, graph, res["zoo"], now=end + RETRY_BASE_SECONDS + 1)
    assert [r.partition_key for r in stale] == [key] and stale[0].tags["cliplab/backfill"] == "stale"
