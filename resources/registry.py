"""The model and dataset registry: partition keys (validated slugs) → what loads them.

The registry is data (a TOML file), never a branch per model in the code. Built-in entries (the
toy CLIP and toyworld) are always present; a user's file adds or overrides entries::

    [models."vit-b-32.openai"]
    kind = "open_clip"            # open_clip architecture + pretrained tag (downloads)
    arch = "ViT-B-32"
    pretrained = "openai"

    [models."vit-b-16.mine"]
    kind = "checkpoint"           # local open_clip .pt / .bin / .safetensors (never unpickled)
    arch = "ViT-B-16"
    path = "/data/ckpt/epoch_32.safetensors"

    [datasets."imagenet-val"]
    kind = "imagenet"             # imagefolder | imagenet | food101 | places365 | toyworld
    root = "/data/imagenet/val"
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cliplab.errors import CliplabError

# Dagster multi-partition keys break on `|`, UI selection on `,`, paths on `/`; the UI refuses spaces
# and `...`. A slug of letters, digits, `.`, `-`, `_` avoids all of them.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")

MODEL_KINDS = ("toy", "open_clip", "checkpoint")
DATASET_KINDS = ("toyworld", "imagefolder", "imagenet", "food101", "places365")


def validate_key(key: str, what: str = "partition key", source: str = "") -> str:
    """Return `key` if it is a safe slug, else raise a CliplabError that says what is wrong with it (and where)."""
    if not isinstance(key, str) or not _SLUG.match(key) or ".." in key:
        bad = sorted({c for c in str(key) if not re.match(r"[a-z0-9._-]", c)})
        detail = f" (forbidden characters: {' '.join(repr(c) for c in bad)})" if bad else ""
        raise CliplabError(
            f"invalid {what} {key!r}{f' in {source}' if source else ''}{detail}: use 1-80 lower-case letters, digits, '.', '-', '_', "
            "starting with a letter or digit, no '..' (e.g. 'vit-b-32.openai')"
        )
    return key


@dataclass(frozen=True)
class ModelSpec:
    key: str
    kind: str
    arch: str = ""
    pretrained: str = ""
    path: str = ""
    seed: int = 0
    options: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class DatasetSpec:
    key: str
    kind: str
    root: str = ""
    split: str = ""
    synsets: str = ""
    options: dict = field(default_factory=dict, compare=False, hash=False)


TOY_MODEL_KEY = "toy-vit.s0"
TOYWORLD_KEY = "toyworld"

BUILTIN_MODELS = {TOY_MODEL_KEY: ModelSpec(TOY_MODEL_KEY, "toy", arch="toy-vit", seed=0)}
# toyworld's bank has 59 descriptors, so the paper's sizes, made for ImageNet's 4,229, would take most of
# it: u = 50 would make D_ŷ 85 % of the bank and the top-500 candidate filter of D_v would keep all of it.
# 7 is what one toyworld class lists (and ≈ 500/4,229 of the bank). `mi_u` and `dv_top` in any dataset
# entry override the paper's 50 and 500.
BUILTIN_DATASETS = {TOYWORLD_KEY: DatasetSpec(TOYWORLD_KEY, "toyworld", split="val", options={"mi_u": 7, "dv_top": 7})}


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]

    def model(self, key: str) -> ModelSpec:
        validate_key(key, "model key")
        if key not in self.models:
            raise CliplabError(f"unknown model {key!r}; registered models: {', '.join(sorted(self.models))}")
        return self.models[key]

    def dataset(self, key: str) -> DatasetSpec:
        validate_key(key, "dataset key")
        if key not in self.datasets:
            raise CliplabError(f"unknown dataset {key!r}; registered datasets: {', '.join(sorted(self.datasets))}")
        return self.datasets[key]


def _model_spec(key: str, entry: dict, source: str) -> ModelSpec:
    validate_key(key, "model key", source)
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in MODEL_KINDS:
        raise CliplabError(f"model {key!r} in {source}: kind must be one of {MODEL_KINDS}, got {kind!r}")
    spec = ModelSpec(key, kind, arch=entry.pop("arch", ""), pretrained=entry.pop("pretrained", ""),
                     path=entry.pop("path", ""), seed=int(entry.pop("seed", 0)), options=entry)
    if kind == "open_clip" and not (spec.arch and spec.pretrained):
        raise CliplabError(f"model {key!r} in {source}: kind 'open_clip' needs 'arch' and 'pretrained'")
    if kind == "checkpoint" and not (spec.arch and spec.path):
        raise CliplabError(f"model {key!r} in {source}: kind 'checkpoint' needs 'arch' and 'path'")
    return spec


def _dataset_spec(key: str, entry: dict, source: str) -> DatasetSpec:
    validate_key(key, "dataset key", source)
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in DATASET_KINDS:
        raise CliplabError(f"dataset {key!r} in {source}: kind must be one of {DATASET_KINDS}, got {kind!r}")
    spec = DatasetSpec(key, kind, root=entry.pop("root", ""), split=entry.pop("split", ""),
                       synsets=entry.pop("synsets", ""), options=entry)
    if kind != "toyworld" and not spec.root:
        raise CliplabError(f"dataset {key!r} in {source}: kind {kind!r} needs 'root' (the folder)")
    return spec


def load_registry(path: str | Path | None = None) -> Registry:
    """Built-in entries, overridden/extended by the TOML file at `path` (absent file = built-ins only)."""
    models, datasets = dict(BUILTIN_MODELS), dict(BUILTIN_DATASETS)
    if path:
        p = Path(path)
        if p.is_file():
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as e:
                raise CliplabError(f"registry file {p} is not valid TOML: {e}") from None
            for key, entry in data.get("models", {}).items():
                models[key] = _model_spec(key, entry, str(p))
            for key, entry in data.get("datasets", {}).items():
                datasets[key] = _dataset_spec(key, entry, str(p))
    return Registry(models, datasets)
