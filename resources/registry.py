"""The model and dataset registry: partition keys (validated slugs) → what loads them.

The registry is data (a TOML file), never a branch per model in the code. Built-in entries (the
toy CLIP and toyworld) are always present; a user's file adds or overrides entries::

    [models."vit-b-32.openai"]
    kind = "open_clip"            # open_clip architecture + pretrained tag (downloads)
    arch = "ViT-B-32"
    pretrained = "openai"

    [models."vit-b-16.mine"]
    kind = "checkpoint"           # local open_clip .pt / .bin / .safetensors (never unpickled)
    arch = "ViT-B-16"             # an open_clip architecture, or "toy-vit"
    path = "/data/ckpt/epoch_32.safetensors"

    [models."vit-b-32.fare4"]
    kind = "checkpoint"           # a bare image-tower state dict (the robust-CLIP scripts' .pt files)
    tower = "visual"              # combined with the text tower of `base`
    base = "vit-b-32.openai"
    path = "/data/ckpt/fare_eps_4.pt"

    [models."vit-b-32.openai.aft-e4"]
    kind = "aft"                  # adversarially fine-tuned from `base` on dataset `data`
    base = "vit-b-32.openai"
    data = "imagenet-train"
    variant = "l1_huber"          # l1_huber | elastic | group | supervised | fare
    eps = 4                       # ε, η, σ in units of 1/255; every AFTConfig field may be set

    [datasets."imagenet-val"]
    kind = "imagenet"             # imagefolder | imagenet | food101 | places365 | toyworld
    root = "/data/imagenet/val"
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from cliplab.errors import CliplabError

# Dagster multi-partition keys break on `|`, UI selection on `,`, paths on `/`; the UI refuses spaces
# and `...`. A slug of letters, digits, `.`, `-`, `_` avoids all of them.
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")

MODEL_KINDS = ("toy", "open_clip", "checkpoint", "aft")
TOWERS = ("full", "visual")
TOY_ARCH = "toy-vit"
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
    base: str = ""  # aft, and checkpoint with tower = "visual": the model key whose weights it starts from
    data: str = ""  # aft: the training dataset key
    tower: str = "full"  # checkpoint: "full" CLIP state dict, or "visual" (image tower only)
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

_TOY_KEY = re.compile(r"^toy-vit\.s(\d{1,6})$")

# The toy CLIP fine-tuned on toyworld at ε = 4/255 and 1/255, two ways:
# - `aft-e4`, `aft-e1`: the paper's defaults, 2 epochs of toyworld's 16,000 train images at batch 128 = 250 steps
#   (as the paper's 2 ImageNet epochs), lr 1e-5;
# - `aft-e4-short`, `aft-e1-short`: 40 steps (a third of an epoch) at lr 1e-4. The paper's lr is for fine-tuning a
#   tower pretrained at ≈ 5e-4; the toy CLIP was trained at 2e-3, and 250 steps at 1e-5 move its weights little.
#   These are what the test suite fine-tunes (about 2 minutes each on a CPU).
TOY_AFT = {"variant": "l1_huber", "steps": 250, "batch_size": 128}
TOY_AFT_SHORT = {**TOY_AFT, "steps": 40, "lr": 1e-4}


def _toy_aft(suffix: str, options: dict) -> ModelSpec:
    return ModelSpec(f"{TOY_MODEL_KEY}.aft-{suffix}", "aft", base=TOY_MODEL_KEY, data="toyworld", options=options)


BUILTIN_MODELS = {
    TOY_MODEL_KEY: ModelSpec(TOY_MODEL_KEY, "toy", arch=TOY_ARCH, seed=0),
    **{s.key: s for e in (4, 1) for s in (_toy_aft(f"e{e}", {**TOY_AFT, "eps": e}),
                                          _toy_aft(f"e{e}-short", {**TOY_AFT_SHORT, "eps": e}))},
}
# toyworld's bank has 59 descriptors, so the paper's sizes, made for ImageNet's 4,229, would take most of
# it: u = 50 would make D_ŷ 85 % of the bank and the top-500 candidate filter of D_v would keep all of it.
# 7 is what one toyworld class lists (and ≈ 500/4,229 of the bank). `mi_u` and `dv_top` in any dataset
# entry override the paper's 50 and 500.
# The evaluation suite's subset sizes on toyworld: APGD (3 ε × CE + 9-target T on the survivors × 100 iterations: up
# to 3,000 forward-backward passes per image, ≈ 3 s per image for the toy CLIP on this CPU) on 64 val images, SSIM on
# 200, ROAR on 1,000 train / 500 val images (9 fractions × 4 rankings re-encoded), all 1,200 for the rest.
BUILTIN_DATASETS = {TOYWORLD_KEY: DatasetSpec(TOYWORLD_KEY, "toyworld", split="val", options={
    "mi_u": 7, "dv_top": 7, "robust_images": 64, "roar_train_images": 1000, "roar_test_images": 500,
    "robustness_images": 200})}


@dataclass(frozen=True)
class Registry:
    models: dict[str, ModelSpec]
    datasets: dict[str, DatasetSpec]
    problems: dict[str, str] = dataclasses.field(default_factory=dict)  # key → why its entry is invalid

    def model(self, key: str) -> ModelSpec:
        validate_key(key, "model key")
        if key in self.problems:
            raise CliplabError(self.problems[key])
        toy = _TOY_KEY.match(key)
        if key not in self.models and toy:
            return ModelSpec(key, "toy", arch=TOY_ARCH, seed=int(toy.group(1)))
        if key not in self.models:
            raise CliplabError(f"unknown model {key!r}; registered models: {', '.join(sorted(self.models))}")
        return self.models[key]

    def dataset(self, key: str) -> DatasetSpec:
        validate_key(key, "dataset key")
        if key in self.problems:
            raise CliplabError(self.problems[key])
        if key not in self.datasets:
            raise CliplabError(f"unknown dataset {key!r}; registered datasets: {', '.join(sorted(self.datasets))}")
        return self.datasets[key]


def _field(entry: dict, name: str, kind: type, where: str, default=None):
    value = entry.pop(name, default)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise CliplabError(f"{where}: '{name}' must be of type {kind.__name__}, got {value!r}")
    return value


def _model_spec(key: str, entry: dict, source: str) -> ModelSpec:
    validate_key(key, "model key", source)
    where = f"model {key!r} in {source}"
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in MODEL_KINDS:
        raise CliplabError(f"{where}: kind must be one of {MODEL_KINDS}, got {kind!r}")
    spec = ModelSpec(key, kind, arch=_field(entry, "arch", str, where, ""), pretrained=_field(entry, "pretrained", str, where, ""),
                     path=_field(entry, "path", str, where, ""), seed=_field(entry, "seed", int, where, 0),
                     base=_field(entry, "base", str, where, ""), data=_field(entry, "data", str, where, ""),
                     tower=_field(entry, "tower", str, where, "full"), options=entry)
    if spec.base:
        validate_key(spec.base, "base model key", source)
    if spec.data:
        validate_key(spec.data, "dataset key", source)
    if kind == "open_clip" and not (spec.arch and spec.pretrained):
        raise CliplabError(f"{where}: kind 'open_clip' needs 'arch' and 'pretrained'")
    if kind == "checkpoint":
        if spec.tower not in TOWERS:
            raise CliplabError(f"{where}: tower must be one of {TOWERS}, got {spec.tower!r}")
        if spec.tower == "visual" and not (spec.base and spec.path):
            raise CliplabError(f"{where}: tower = 'visual' needs 'base' (the model key of its text tower) and 'path'")
        if spec.tower == "full" and not (spec.arch and spec.path):
            raise CliplabError(f"{where}: kind 'checkpoint' needs 'arch' and 'path'")
    if kind == "aft":
        if not (spec.base and spec.data):
            raise CliplabError(f"{where}: kind 'aft' needs 'base' (a model key) and 'data' (a dataset key)")
        aft_config(spec, source)  # every hyper-parameter checked now, before any run
    if kind == "toy":
        toy_config(spec, source)
    return spec


def _typed_options(spec: ModelSpec, defaults, source: str, extra: tuple[str, ...] = ()) -> dict:
    """spec.options checked against the fields of the dataclass `defaults` (names and types)."""
    where = f"model {spec.key!r}{f' in {source}' if source else ''}"
    fields = {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(defaults)}
    out = {}
    for name, value in spec.options.items():
        if name in extra:
            continue
        if name not in fields:
            raise CliplabError(f"{where}: unknown field {name!r} for kind {spec.kind!r}; known: {', '.join(sorted(fields) + list(extra))}")
        want = fields[name]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if want is float else \
             isinstance(value, (list, tuple)) if want is tuple else \
             isinstance(value, want) and not (want is int and isinstance(value, bool))
        if not ok:
            raise CliplabError(f"{where}: {name!r} must be of type {want.__name__}, got {value!r}")
        out[name] = tuple(value) if want is tuple else value
    return out


def aft_config(spec: ModelSpec, source: str = "", n_train: int | None = None):
    """The validated AFTConfig of an `aft` entry. Without `steps` it trains `epochs` (default 2, the paper's)
    epochs of the training set: pass `n_train` (its size) to resolve them into steps."""
    from cliplab.aft.training import AFTConfig, epochs_to_steps

    where = f"model {spec.key!r}{f' in {source}' if source else ''}"
    values = _typed_options(spec, AFTConfig(), source, extra=("epochs",))
    epochs = spec.options.get("epochs", None if "steps" in values else 2.0)
    if "steps" in values and "epochs" in spec.options:
        raise CliplabError(f"{where}: give 'steps' or 'epochs', not both")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or epochs <= 0):
        raise CliplabError(f"{where}: 'epochs' must be a number > 0, got {epochs!r}")
    try:
        cfg = AFTConfig(**values, seed=spec.seed).validated()
    except CliplabError as e:
        raise CliplabError(f"{where}: {e}") from None
    if epochs is not None and n_train is not None:
        cfg = dataclasses.replace(cfg, steps=epochs_to_steps(epochs, n_train, cfg.batch_size))
    return cfg


def toy_config(spec: ModelSpec, source: str = ""):
    """The toy CLIP's TrainConfig of a `toy` entry (its seed is the entry's)."""
    from cliplab.toy.clip import TrainConfig

    values = _typed_options(spec, TrainConfig(), source)
    values.pop("seed", None)
    cfg = TrainConfig(**values, seed=spec.seed)
    for name in ("steps", "batch_size", "warmup"):
        if getattr(cfg, name) < (0 if name == "warmup" else 1):
            raise CliplabError(f"model {spec.key!r}: toy {name} must be >= {0 if name == 'warmup' else 1}, got {getattr(cfg, name)}")
    if not cfg.lr > 0:
        raise CliplabError(f"model {spec.key!r}: toy lr must be > 0, got {cfg.lr}")
    return cfg


# The options a dataset entry may carry: type, meaning.
DATASET_OPTIONS: dict[str, tuple[type, str]] = {
    "descriptors": (str, "a JSON file {class name: [descriptor, ...]}"),
    "masks": (str, "the folder of part/object masks"),
    "mask_format": (str, "how the masks are stored"),
    "allow_empty_classes": (bool, "keep class folders without images"),
    "follow_symlinks": (bool, "read symlinks whose target lies outside root"),
    "mi_u": (int, "|D_y| for the MI curves"),
    "dv_top": (int, "descriptor candidates per concept"),
    "robust_images": (int, "images attacked by APGD"),
    "robustness_images": (int, "images of the explanation-robustness test"),
    "roar_train_images": (int, "ROAR probe training images"),
    "roar_test_images": (int, "ROAR test images"),
    "dissect_images": (int, "CLIP-dissect probe images"),
}


def _dataset_spec(key: str, entry: dict, source: str) -> DatasetSpec:
    validate_key(key, "dataset key", source)
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in DATASET_KINDS:
        raise CliplabError(f"dataset {key!r} in {source}: kind must be one of {DATASET_KINDS}, got {kind!r}")
    for name in ("root", "split", "synsets"):
        if not isinstance(entry.get(name, ""), str):
            raise CliplabError(f"dataset {key!r} in {source}: {name!r} must be a string, got {entry[name]!r}")
    spec = DatasetSpec(key, kind, root=entry.pop("root", ""), split=entry.pop("split", ""),
                       synsets=entry.pop("synsets", ""), options=entry)
    for name, value in entry.items():
        if name not in DATASET_OPTIONS:
            raise CliplabError(f"dataset {key!r} in {source}: unknown field {name!r}; known: root, split, synsets, "
                               f"{', '.join(sorted(DATASET_OPTIONS))}")
        kind_of, meaning = DATASET_OPTIONS[name]
        if kind_of is int and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise CliplabError(f"dataset {key!r} in {source}: {name!r} ({meaning}) must be an integer >= 1, got {value!r}")
        if kind_of is not int and not isinstance(value, kind_of):
            raise CliplabError(f"dataset {key!r} in {source}: {name!r} ({meaning}) must be a "
                               f"{kind_of.__name__}, got {value!r}")
    if kind != "toyworld" and not spec.root:
        raise CliplabError(f"dataset {key!r} in {source}: kind {kind!r} needs 'root' (the folder)")
    return spec


def load_registry(path: str | Path | None = None, problems: dict[str, str] | None = None) -> Registry:
    """Built-in entries, overridden/extended by the TOML file at `path` (absent file = built-ins only).

    An invalid entry raises; with `problems` given, it is left out instead and its error recorded there by key
    (one bad entry does not hide the others from the sensor)."""
    models, datasets = dict(BUILTIN_MODELS), dict(BUILTIN_DATASETS)
    if path:
        p = Path(path)
        if p.is_file():
            try:
                data = tomllib.loads(p.read_text())
            except tomllib.TOMLDecodeError as e:
                raise CliplabError(f"registry file {p} is not valid TOML: {e}") from None
            for table, parse, out in (("models", _model_spec, models), ("datasets", _dataset_spec, datasets)):
                for key, entry in data.get(table, {}).items():
                    try:
                        out[key] = parse(key, entry, str(p))
                    except CliplabError as e:
                        if problems is None:
                            raise
                        problems[key] = str(e)
    return Registry(models, datasets, dict(problems or {}))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise CliplabError(f"cannot write {value!r} into the registry (strings, numbers, booleans and lists only)")


def _header(table: str, key: str) -> re.Pattern:
    return re.compile(rf'^\[{table}\.(?:"{re.escape(key)}"|{re.escape(key)})\]\s*(#.*)?$', re.M)


def add_model_entry(path: str | Path, key: str, fields: dict) -> ModelSpec:
    """Append `[models."key"]` with `fields` to the registry file (created if absent), after checking the entry
    exactly as loading does; refuses a key that is already there. The file is replaced atomically."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    if _header("models", key).search(text) or key in BUILTIN_MODELS:
        raise CliplabError(f"model {key!r} is already in {path if key not in BUILTIN_MODELS else 'the built-ins'}; "
                           f"remove it first (cliplab models rm {key})")
    spec = _model_spec(key, fields, str(path))
    block = f'[models."{key}"]\n' + "".join(f"{k} = {_toml_value(v)}\n" for k, v in fields.items())
    new = text + ("\n" if text and not text.endswith("\n\n") else "") + block
    tomllib.loads(new)  # never leave a file the next load cannot read
    _replace_text(path, new)
    return spec


def remove_model_entry(path: str | Path, key: str) -> None:
    """Delete the `[models."key"]` table (up to the next table header) from the registry file, atomically."""
    path = Path(path)
    text = path.read_text() if path.is_file() else ""
    match = _header("models", key).search(text)
    if not match:
        where = "a built-in" if key in BUILTIN_MODELS else f"not in {path}"
        raise CliplabError(f"model {key!r} is {where}: nothing to remove from the registry")
    nxt = re.compile(r"^\s*\[", re.M).search(text, match.end())
    head = text[:match.start()]
    new = head + text[nxt.start():] if nxt else (head.rstrip("\n") + "\n" if head.strip() else "")
    tomllib.loads(new)
    _replace_text(path, new)


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
