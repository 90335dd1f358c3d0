"""The model zoo: a model key → a loaded open_clip model, its preprocessing and tokenizer.

Three ways to load (the registry's `kind`): an open_clip architecture + pretrained tag (downloaded
once into the open_clip/Hugging Face cache), a local open_clip checkpoint (.safetensors, or .pt/.bin
read with `torch.load(weights_only=True)`, which refuses arbitrary pickled objects), or a checkpoint
folder written by the pipeline itself (`<artifacts>/checkpoints/<key>/`: open_clip's `local-dir`
format, `open_clip_config.json` + `open_clip_model.safetensors`: the toy CLIP, AFT checkpoints).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from resources.registry import ModelSpec, load_registry, validate_key

CONFIG_FILE = "open_clip_config.json"
RESIZE_MODES = ("shortest", "squash")
WEIGHTS_FILE = "open_clip_model.safetensors"
_CACHE: dict[tuple, "LoadedModel"] = {}


@dataclass
class LoadedModel:
    key: str
    spec: ModelSpec
    model: Any  # open_clip CLIP, eval mode, on `device`
    preprocess: Any  # PIL image → (3, H, W) tensor
    tokenizer: Any  # list[str] → (n, context_length) tokens
    device: str
    image_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    family: str  # "vit" or "resnet": partitions comparable within an architecture family


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CliplabError(f"device {device!r} asked for, but torch sees no CUDA device")
    return device


def read_state_dict(path: str | Path) -> dict:
    """Tensors of a checkpoint file without unpickling arbitrary objects."""
    import torch

    p = Path(path)
    if not p.is_file():
        raise CliplabError(f"checkpoint file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise CliplabError(f"checkpoint {p} is not a readable safetensors file: {e}") from None
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            state = torch.load(str(p), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CliplabError(
                f"checkpoint {p} holds more than plain tensors and is not unpickled (weights_only=True "
                f"refused it: {first}). Convert it to .safetensors, or save a plain state_dict."
            ) from None
    else:
        raise CliplabError(f"checkpoint {p}: unknown format {p.suffix!r}; use .safetensors, .pt, .pth or .bin")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CliplabError(f"checkpoint {p} is not a state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def load_weights(model, state: dict, source: str) -> None:
    """Load `state` into `model`, refusing (with the offending keys named) any missing, extra or misshapen tensor."""
    own = model.state_dict()
    if "logit_scale" in state and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    wrong = [f"{k}: checkpoint {tuple(state[k].shape)} vs architecture {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]
    if missing or extra or wrong:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
        if missing:
            parts.append(f"{len(missing)} missing tensors (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} unexpected tensors (e.g. {', '.join(extra[:3])})")
        raise CliplabError(f"checkpoint {source} does not match its architecture: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def save_checkpoint(model, model_cfg: dict, folder: str | Path, extra: dict | None = None) -> Path:
    """Write model weights (safetensors) + JSON sidecar into `folder` atomically (staged, then renamed)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staged = folder.parent / f".{folder.name}.staging-{uuid.uuid4().hex[:8]}"
    staged.mkdir()
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staged / WEIGHTS_FILE))
        sha = hashlib.sha256((staged / WEIGHTS_FILE).read_bytes()).hexdigest()
        sidecar = {"model_cfg": model_cfg, "preprocess_cfg": {}, "cliplab": {**(extra or {}), "sha256": sha}}
        (staged / CONFIG_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        if folder.exists():
            folder.rename(old)
        staged.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return folder


def read_sidecar(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CliplabError(f"checkpoint folder {folder} has no {CONFIG_FILE}")
    return json.loads(path.read_text())


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def download_pretrained(arch: str, tag: str, cache_dir: str | None) -> str:
    """Local path of open_clip's pretrained weights `arch`/`tag`, downloading them if needed."""
    import open_clip

    if arch not in open_clip.list_models():
        raise CliplabError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise CliplabError(f"unknown pretrained tag {tag!r} for {arch}; known tags: {', '.join(tags) or 'none'}")
    hub = cfg.get("hf_hub", "")
    cache = cache_dir or os.environ.get("HF_HUB_CACHE") or os.path.expanduser("~/.cache/huggingface/hub")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "open_clip_pytorch_model.bin")
        for name in (filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            cached = try_to_load_from_cache(repo, name, cache_dir=cache_dir or None)
            if isinstance(cached, str):
                return cached
    if os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable():
        raise CliplabError(
            f"pretrained weights {arch!r}/{tag!r} are not in the cache ({cache}) and cannot be downloaded: "
            f"no network (source: {hub or cfg.get('url', '?')}). Download them on a machine with network "
            "into that cache, or register a local checkpoint (kind = 'checkpoint')."
        )
    try:
        return open_clip.download_pretrained(cfg, cache_dir=cache_dir or None)
    except Exception as e:  # the hub's own errors are long; keep the first line
        raise CliplabError(f"downloading pretrained weights {arch!r}/{tag!r} failed: {str(e).splitlines()[0]}") from None


class ModelZoo(ConfigurableResource):
    """Loads models by key. `registry`: TOML file (optional); `artifacts_root`: where pipeline checkpoints live."""

    registry: str = "registry.toml"
    artifacts_root: str = "./artifacts"
    device: str = "auto"
    cache_dir: str = ""
    # image preprocessing: "shortest" = open_clip's val transform (resize the short side, centre crop);
    # "squash" = the mutual-knowledge reference (resize to the model's size, no crop)
    resize_mode: str = "shortest"

    def checkpoint_dir(self, key: str) -> Path:
        return Path(self.artifacts_root) / "checkpoints" / validate_key(key, "model key")

    def spec(self, key: str) -> ModelSpec:
        """The registry's entry, or a checkpoint folder the pipeline wrote (toy CLIP, AFT)."""
        validate_key(key, "model key")
        reg = load_registry(self.registry)
        if key in reg.models:
            return reg.models[key]
        if (self.checkpoint_dir(key) / CONFIG_FILE).is_file():
            return ModelSpec(key, "toy", arch="local-dir")
        return reg.model(key)  # raises the "unknown model" error listing the known ones

    def known_keys(self) -> list[str]:
        keys = set(load_registry(self.registry).models)
        root = Path(self.artifacts_root) / "checkpoints"
        if root.is_dir():
            keys |= {p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()}
        return sorted(keys)

    def load(self, key: str) -> LoadedModel:
        spec = self.spec(key)
        device = pick_device(self.device)
        cache_key = (key, device, str(Path(self.artifacts_root).resolve()), self._fingerprint(spec), self.resize_mode)
        if cache_key not in _CACHE:
            _CACHE.clear()  # one model in memory at a time: GPU memory is the scarce thing
            _CACHE[cache_key] = self._load(spec, device)
        return _CACHE[cache_key]

    def _fingerprint(self, spec: ModelSpec) -> str:
        if spec.kind == "toy":
            cfg = self.checkpoint_dir(spec.key) / CONFIG_FILE
            return str(cfg.stat().st_mtime_ns) if cfg.is_file() else "absent"
        return f"{spec.arch}|{spec.pretrained}|{spec.path}"

    def _load(self, spec: ModelSpec, device: str) -> LoadedModel:
        import open_clip

        mean, std = open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD
        if spec.kind == "toy":
            folder = self.checkpoint_dir(spec.key)
            if not (folder / CONFIG_FILE).is_file():
                raise CliplabError(
                    f"model {spec.key!r} has no checkpoint in {folder}: materialise the toy_clip asset first "
                    "(`cliplab run` does)"
                )
            cfg = read_sidecar(folder)["model_cfg"]
            model = open_clip.CLIP(**cfg)
            load_weights(model, read_state_dict(folder / WEIGHTS_FILE), str(folder / WEIGHTS_FILE))
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        else:
            if spec.arch not in open_clip.list_models():
                raise CliplabError(f"model {spec.key!r}: unknown open_clip architecture {spec.arch!r}")
            path = spec.path if spec.kind == "checkpoint" else download_pretrained(spec.arch, spec.pretrained, self.cache_dir)
            model = open_clip.create_model(spec.arch, pretrained=None, load_weights=False)
            load_weights(model, read_state_dict(path), str(path))
            if spec.kind == "open_clip":
                pcfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
                mean, std = tuple(pcfg.get("mean", mean)), tuple(pcfg.get("std", std))
            tokenizer = open_clip.get_tokenizer(spec.arch)
        return self._finish(spec, model, tokenizer, device, mean, std)

    def random_init(self, arch: str, seed: int = 0) -> LoadedModel:
        """A real open_clip architecture with random weights (tests and benchmarks; loads offline)."""
        import open_clip
        import torch

        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
        spec = ModelSpec(f"{arch.lower()}.random-s{seed}", "open_clip", arch=arch, pretrained="random")
        return self._finish(spec, model, open_clip.get_tokenizer(arch), pick_device(self.device),
                            open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)

    def _finish(self, spec, model, tokenizer, device, mean, std) -> LoadedModel:
        import open_clip

        if self.resize_mode not in RESIZE_MODES:
            raise CliplabError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        model = model.to(device).eval()
        size = model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        preprocess = open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=self.resize_mode)
        family = "resnet" if hasattr(model.visual, "attnpool") else "vit"
        return LoadedModel(spec.key, spec, model, preprocess, tokenizer, device, size, tuple(mean), tuple(std), family)
