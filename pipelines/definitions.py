"""The code location: assets, resources, jobs and the registry sensor, wired together."""

from __future__ import annotations

import os

from dagster import Definitions

from assets import checkpoint, data, encodings
from assets.automation import operated
from assets.evaluation import dissect, explanations, localisation, robustness, saliency, table
from assets.evaluation import roar as roar_assets
from assets.heads import contributions as heads
from assets.heads import maps as head_maps
from assets.heads import spans as head_spans
from assets.mutual import concepts, descriptors, evaluations
from assets.mutual import knowledge as mutual
from assets.toy import world as toy
from cliplab.errors import CliplabError
from pipelines.deploy import executor_from_env
from pipelines.jobs import JOBS
from pipelines.schedules import backfill_schedule
from pipelines.sensors import automation, registry_sensor
from resources.datasets import DatasetCatalog
from resources.labelers import HeadLabelers
from resources.lance import LanceStore
from resources.models import ModelZoo
from resources.objectstore import cache_folder, is_remote
from resources.reference_data import ReferenceData
from resources.store import ArtifactStore


def torch_threads() -> int:
    """CLIPLAB_TORCH_THREADS: a whole number ≥ 0 (0 or unset: decided per run, resources.threads)."""
    value = os.environ.get("CLIPLAB_TORCH_THREADS", "0").strip() or "0"
    if not value.isdigit():
        raise CliplabError(f"CLIPLAB_TORCH_THREADS must be a whole number ≥ 0 (0: decided per run), got {value!r}")
    return int(value)


def resources_from_env(root: str | None = None, registry: str | None = None) -> dict:
    """Resources configured from CLIPLAB_ARTIFACTS (root folder or URI), CLIPLAB_REGISTRY, CLIPLAB_DEVICE, CLIPLAB_RESIZE_MODE,
    CLIPLAB_REFERENCE_DIR (a folder laid out like shared/data holding the published reference files)."""
    root = root or os.environ.get("CLIPLAB_ARTIFACTS", "./artifacts")
    registry = registry or os.environ.get("CLIPLAB_REGISTRY", "registry.toml")
    return {
        "store": ArtifactStore(root=root),
        "lance": LanceStore(uri=f"{root.rstrip('/')}/lancedb"),
        "zoo": ModelZoo(registry=registry, artifacts_root=root, device=os.environ.get("CLIPLAB_DEVICE", "auto"),
                        resize_mode=os.environ.get("CLIPLAB_RESIZE_MODE", "shortest"),
                        watch_dir=os.environ.get("CLIPLAB_CHECKPOINT_DIR", ""),
                        torch_threads=torch_threads()),
        "datasets": DatasetCatalog(registry=registry, artifacts_root=root,
                                   num_workers=int(os.environ.get("CLIPLAB_LOADER_WORKERS", "0"))),
        "reference": ReferenceData(cache_dir=str(cache_folder(root) / "reference") if is_remote(root) else f"{root.rstrip('/')}/reference",
                                   local_dir=os.environ.get("CLIPLAB_REFERENCE_DIR", "")),
        "labelers": HeadLabelers(),  # LLM endpoint from $CLIPLAB_LLM_URL / _MODEL / _API_KEY when the llm labeler is chosen
    }


defs = Definitions(
    assets=operated([toy.toyworld, checkpoint.checkpoint, data.dataset_manifest, data.class_text_embeddings, encodings.image_encodings,
            concepts.prominent_patches, concepts.concept_clusters, descriptors.descriptor_embeddings,
            descriptors.class_descriptors, mutual.visual_concept_descriptors, mutual.mi_curves, mutual.mi_summary,
            mutual.model_comparison, evaluations.concept_eval, evaluations.descriptor_zero_shot,
            heads.head_contributions, heads.text_bank_embeddings,
            head_spans.head_spans, head_spans.head_labels, head_spans.head_scores, head_spans.head_score_table,
            head_maps.head_analysis_examples, saliency.saliency_maps, localisation.localisation_eval,
            explanations.explanation_robustness, robustness.zero_shot_robustness, roar_assets.roar,
            dissect.neuron_concepts, table.evaluation_table]),
    jobs=JOBS,
    sensors=[registry_sensor, automation],
    schedules=[backfill_schedule],
    resources=resources_from_env(),
    # One process per run, steps in sequence: the model (and, on a GPU, the CUDA context) is loaded once per run
    # and shared by its steps through the zoo's per-process cache, instead of a fresh Python + torch import +
    # model load per step (17-20 s each here; benchmarks/executor.py measures both). With CLIPLAB_CELERY_BROKER set,
    # Celery workers on several machines run the steps, GPU steps on the `gpu` queue (pipelines/deploy.py).
    executor=executor_from_env(),
)
