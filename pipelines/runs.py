"""Materialise one (model, dataset) partition with everything it needs, in order, in this process.

The `checkpoint` asset is partitioned by model alone and the analyses by model × dataset, so one partition
takes up to three kinds of run: toyworld (when a toy model or dataset needs it and it is missing), the
`models` job for each checkpoint of the model's chain (an AFT model's base first), then `main`. Checkpoints
already materialised are reused unless asked to retrain. `cliplab run` and the tests both come here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from assets.partitions import partition_key
from cliplab.errors import CliplabError
from resources.registry import TOYWORLD_KEY


@dataclass
class Outcome:
    results: list = field(default_factory=list)  # Dagster ExecuteInProcessResult per run, in order

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def failure(self):
        return next((r for r in self.results if not r.success), None)

    @property
    def all_events(self) -> list:
        return [e for r in self.results for e in r.all_events]

    def asset_materializations_for_node(self, node: str) -> list:
        """The materialisations of `node` in every run (ExecuteInProcessResult's method, across runs)."""
        return [m for r in self.results if node in {n.name for n in r.job_def.nodes}
                for m in r.asset_materializations_for_node(node)]


def checkpoint_chain(zoo, model: str) -> list[str]:
    """The model keys whose checkpoint `model` needs, base first (an AFT model of an AFT model: three)."""
    chain = [model]
    while True:
        spec = zoo.spec(chain[-1])
        base = spec.base if spec.kind == "aft" or (spec.kind == "checkpoint" and spec.tower == "visual") else ""
        if not base:
            return chain[::-1]
        if base in chain:
            raise CliplabError(f"model {model!r}: its bases form a cycle ({' → '.join(chain + [base])})")
        try:
            zoo.spec(base)
        except CliplabError as e:
            raise CliplabError(f"model {chain[-1]!r}: unknown base model {base!r} ({e})") from None
        chain.append(base)


def _needs_toyworld(zoo, datasets, chain: list[str], dataset: str) -> bool:
    if datasets.spec(dataset).kind == "toyworld":
        return True
    for key in chain:
        spec = zoo.spec(key)
        if spec.kind == "toy" or (spec.kind == "aft" and datasets.spec(spec.data).kind == "toyworld"):
            return True
    return False


def materialise(instance, model: str, dataset: str, resources: dict, *, retrain: bool = False,
                steps: dict[str, int] | None = None, toyworld: dict | None = None, analysis_config: dict | None = None,
                analyses: bool = True, log: Callable[[str], None] = lambda s: None) -> Outcome:
    """Materialise (model, dataset): missing toyworld and checkpoints first, then the `main` job.

    retrain: re-materialise `model`'s own checkpoint (and toyworld, for the toy pair) even if present;
    steps: {model key: training steps} for toy / AFT checkpoints (quick runs); toyworld: its asset's config
    (n_train, n_val, ...), which regenerates it; analysis_config: {asset: config} for the `main` run; analyses:
    False stops after the checkpoints.
    """
    from pipelines.definitions import defs
    from pipelines.liveness import reap_dead_runs, worker_tags

    zoo, datasets = resources["zoo"], resources["datasets"]
    key = partition_key(model, dataset)  # invalid keys fail here, before anything runs
    reap_dead_runs(instance, log)  # a killed earlier run would hold the `gpu` slot this one waits for
    chain = checkpoint_chain(zoo, model)
    datasets.spec(dataset)
    instance.add_dynamic_partitions("model", chain)
    instance.add_dynamic_partitions("dataset", [dataset])
    toy_pair = model == chain[0] and zoo.spec(model).kind == "toy" and dataset == TOYWORLD_KEY
    make_world = _needs_toyworld(zoo, datasets, chain, dataset) and (
        toyworld is not None or (retrain and toy_pair) or not datasets.toyworld_path("train").is_file()
        or not datasets.toyworld_path("val").is_file())
    outcome = Outcome()
    for k in chain:
        fresh = not zoo.has_checkpoint(k) and zoo.spec(k).kind != "open_clip"
        verified = zoo.spec(k).kind == "open_clip" and not _materialised(instance, k)
        if not (fresh or verified or make_world or (retrain and k == model) or (steps and k in steps)):
            log(f"checkpoint {k}: reusing {zoo.checkpoint_dir(k)}")
            continue
        ops = {}
        if steps and k in steps:
            ops["checkpoint"] = {"config": {"steps": steps[k]}}
        if make_world and toyworld:
            ops["toyworld"] = {"config": toyworld}
        job = "models" if make_world else "checkpoints"
        log(f"checkpoint {k}: materialising ({'with toyworld' if make_world else zoo.spec(k).kind})")
        result = defs.resolve_job_def(job).execute_in_process(
            instance=instance, partition_key=k, run_config={"ops": ops}, resources=resources, raise_on_error=False,
            tags=worker_tags())
        outcome.results.append(result)
        make_world = False
        if not result.success:
            return outcome
    if analyses:
        ops = {name: {"config": cfg} for name, cfg in (analysis_config or {}).items()}
        outcome.results.append(defs.resolve_job_def("main").execute_in_process(
            instance=instance, partition_key=key, resources=resources, raise_on_error=False, run_config={"ops": ops},
            tags=worker_tags()))
    return outcome


def _materialised(instance, model: str) -> bool:
    from dagster import AssetKey

    return model in instance.get_materialized_partitions(AssetKey("checkpoint"))
