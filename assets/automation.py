"""When assets materialise without a click, and who answers for them: declarative automation, owners and tags.

Who does what without a click (all on by default under `cliplab ui`):
- `registry_sensor` adds new models and datasets as partitions, runs the checkpoint of each new model and one `main`
  run per (model, dataset) pair with anything missing (one process, the model loaded once);
- ANALYSIS re-materialises an existing (model, dataset) partition of an analysis when a parent partition changes
  (new weights under a model key, an upstream asset re-run from the UI), together with everything below it;
- REFRESH keeps the unpartitioned cross-model tables current;
- `backfill_schedule` retries what failed, with backoff, and whatever the rest left missing or stale.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from dagster import AssetsDefinition, AutomationCondition, MultiPartitionsDefinition, map_asset_specs

# Not `eager()`: its `newly_missing` would race the sensor's `main` run for a new pair; a missing partition is the
# sensor's (and the schedule's). Parent updates from the run that also materialised the asset are ignored
# (`any_deps_updated`), so a `main` run does not trigger itself again.
ANALYSIS = (AutomationCondition.any_deps_updated().since_last_handled() & ~AutomationCondition.missing()
            & ~AutomationCondition.any_deps_missing() & ~AutomationCondition.any_deps_in_progress()
            & ~AutomationCondition.in_progress()).with_label("re-run when a parent partition changes")

# Not `eager()` either: that waits until no upstream partition is missing, and some never exist (a ResNet has no
# head spans).
REFRESH = (AutomationCondition.any_deps_updated() & ~AutomationCondition.any_deps_in_progress()
           & ~AutomationCondition.in_progress()).with_label("refresh when any model's partition changes")

# The method each group implements, as a tag to filter the catalog by.
METHOD = {"toy": "toyworld", "models": "checkpoints", "data": "features", "encodings": "features",
          "mutual_knowledge": "mutual-knowledge", "head_spans": "text-span", "evaluation": "evaluation"}


def owners() -> list[str]:
    """$CLIPLAB_OWNERS (comma-separated e-mail addresses or `team:name`), default `team:interpretability`."""
    return [o.strip() for o in os.environ.get("CLIPLAB_OWNERS", "team:interpretability").split(",") if o.strip()]


def operated(assets: Sequence[AssetsDefinition]) -> Sequence[AssetsDefinition]:
    """Every asset with owners and a `method` tag; every (model, dataset) analysis with ANALYSIS and every
    unpartitioned table computed from them with REFRESH (toyworld and checkpoints are the sensor's)."""
    by_key = {spec.key: spec for a in assets for spec in a.specs}
    who = owners()

    def attach(spec, pool):
        partitioned = isinstance(spec.partitions_def, MultiPartitionsDefinition)
        reads_partitions = any(isinstance(getattr(by_key.get(d.asset_key), "partitions_def", None),
                                          MultiPartitionsDefinition) for d in spec.deps)
        condition = ANALYSIS if partitioned else REFRESH if reads_partitions else spec.automation_condition
        tags = {"method": METHOD.get(spec.group_name or "", "other"), "device": "gpu" if pool == "gpu" else "cpu"}
        return spec.replace_attributes(automation_condition=condition, owners=who, tags={**spec.tags, **tags})

    return [b for a in assets for b in map_asset_specs(lambda spec, pool=a.node_def.pool: attach(spec, pool), [a])]
