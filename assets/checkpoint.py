"""checkpoint: the root of every model's lineage, partitioned by model alone.

For each kind of model key it makes verified weights available, with their sha256 as the partition's data
version (new or changed weights mark every analysis of that model stale):
- `open_clip` tag: downloaded once into the open_clip/Hugging Face cache, loaded into its architecture, hashed;
- `checkpoint` (a local file, or a bare image tower + a base's text tower): read without unpickling,
  checked against its architecture, stored as safetensors under `<artifacts>/checkpoints/<key>/`;
- `toy`: the toy CLIP trained on toyworld (`assets.toy.clip`);
- `aft`: the base model's checkpoint adversarially fine-tuned (`assets.aft.finetune`).
An `aft` partition reads its base's partition: materialise the base first (`cliplab run` does it in order).
"""

from typing import Optional

from dagster import AssetExecutionContext, Config, DataVersion, MaterializeResult, MetadataValue, RetryRequested, asset

from assets.aft.finetune import finetune_checkpoint
from assets.partitions import model_partitions
from assets.toy.clip import train_toy_checkpoint
from assets.toy.world import toyworld
from cliplab.errors import CliplabError, DownloadError
from resources.datasets import DatasetCatalog
from resources.models import ModelZoo, download_pretrained, read_sidecar, save_checkpoint, sha256_file, source_file
from resources.registry import validate_key
from resources.store import ArtifactStore

DOWNLOAD_RETRIES, DOWNLOAD_RETRY_SECONDS = 3, 30


class CheckpointConfig(Config):
    steps: Optional[int] = None  # toy and aft: training steps instead of the registry entry's (quick runs, tests)


def _verify_pretrained(context, spec, zoo: ModelZoo, **_) -> dict:
    try:
        path = download_pretrained(spec.arch, spec.pretrained, zoo.cache_dir)
    except DownloadError as e:  # the network, not the input: Dagster retries the step (30 s, 60 s, 120 s)
        context.log.warning(f"{e}; retrying")
        raise RetryRequested(max_retries=DOWNLOAD_RETRIES, seconds_to_wait=DOWNLOAD_RETRY_SECONDS * 2 ** context.retry_number) from e
    zoo.source_weights(spec)  # every tensor present, with its architecture's shape
    return {"source": MetadataValue.path(str(path)), "sha256": sha256_file(path)}


def _store_checkpoint(context, spec, zoo: ModelZoo, **_) -> dict:
    weights = zoo.source_weights(spec)
    source_sha = sha256_file(source_file(spec.path))
    extra = {"kind": "checkpoint", "source": spec.path, "source_sha256": source_sha, "tower": spec.tower, "base": spec.base}
    save_checkpoint(weights, zoo.checkpoint_dir(spec.key), extra=extra)
    return {"source": MetadataValue.path(spec.path), "source sha256": source_sha, "tower": spec.tower,
            **({"base": spec.base} if spec.base else {})}


def _verify_folder(context, spec, zoo: ModelZoo, **_) -> dict:
    zoo.folder_weights(spec.path)
    return {"note": "checkpoint folder without a registry entry: verified as it is"}


def _train_toy(context, spec, zoo, datasets, store, steps) -> dict:
    return train_toy_checkpoint(context, spec, steps, zoo, datasets, store)


def _finetune(context, spec, zoo, datasets, store, steps) -> dict:
    return finetune_checkpoint(context, spec, steps, zoo, datasets, store)


MAKERS = {"open_clip": _verify_pretrained, "checkpoint": _store_checkpoint, "local-dir": _verify_folder,
          "toy": _train_toy, "aft": _finetune}


@asset(code_version="1", partitions_def=model_partitions, deps=[toyworld], group_name="models", kinds={"pytorch", "safetensors"},
       pool="gpu")
def checkpoint(context: AssetExecutionContext, config: CheckpointConfig, zoo: ModelZoo, datasets: DatasetCatalog,
               store: ArtifactStore) -> MaterializeResult:
    """Verified weights of one model (open_clip tag, local checkpoint, toy CLIP or AFT fine-tune), keyed by sha256."""
    key = validate_key(context.partition_key, "model key")
    if config.steps is not None and config.steps < 1:
        raise CliplabError(f"checkpoint config: steps must be >= 1, got {config.steps}")
    spec = zoo.spec(key)
    meta = MAKERS[spec.kind](context, spec, zoo=zoo, datasets=datasets, store=store, steps=config.steps)
    if spec.kind == "open_clip":
        sha = meta["sha256"]
    else:
        folder = zoo.checkpoint_dir(key) if spec.kind != "local-dir" else spec.path
        sha = read_sidecar(folder)["cliplab"]["sha256"]
        if spec.kind != "local-dir":
            zoo.publish_checkpoint(key)  # an object-store root: uploaded, the sidecar last (a no-op for a folder)
            folder = zoo.checkpoint_uri(key)
        meta = {**meta, "checkpoint": MetadataValue.path(str(folder)), "sha256": sha}
    context.log.info(f"checkpoint {key} ({spec.kind}): sha256 {sha[:16]}…")
    return MaterializeResult(metadata={"model key": key, "kind": spec.kind, **meta}, data_version=DataVersion(sha))
