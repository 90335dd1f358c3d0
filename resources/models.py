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
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dagster import ConfigurableResource

from cliplab.errors import CliplabError, DownloadError
from resources.atomic import recover, replaced_folder
from resources.objectstore import cache_folder, is_remote
from resources.registry import TOY_ARCH, ModelSpec, load_registry, validate_key

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


@dataclass
class Weights:
    """A built open_clip model with its weights loaded, on the CPU, with what rebuilds it: `arch` (an open_clip
    architecture name, or "toy-vit"), `model_cfg` (its config), the preprocessing's mean and std."""

    model: Any
    tokenizer: Any
    arch: str
    model_cfg: dict
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def build_architecture(arch: str, source: str = ""):
    """(random-init open_clip model, tokenizer, model config) for an open_clip architecture name or "toy-vit"."""
    import open_clip

    from cliplab.toy.clip import TOY_CLIP_CONFIG, build_toy_clip, toy_tokenizer

    if arch == TOY_ARCH:
        return build_toy_clip(), toy_tokenizer(), TOY_CLIP_CONFIG
    if arch not in open_clip.list_models():
        raise CliplabError(f"{source or 'model'}: unknown architecture {arch!r}: use an open_clip architecture "
                           f"(open_clip.list_models(), e.g. 'ViT-B-32') or {TOY_ARCH!r}")
    model = open_clip.create_model(arch, pretrained=None, load_weights=False)
    return model, open_clip.get_tokenizer(arch), open_clip.get_model_config(arch)


def as_weights(model, arch: str) -> Weights:
    """`model` (an instance of `arch`: "toy-vit" or an open_clip name) with its architecture's config, tokenizer
    and OpenAI's normalisation, ready for `save_checkpoint`."""
    import open_clip

    from cliplab.toy.clip import TOY_CLIP_CONFIG, toy_tokenizer

    if arch == TOY_ARCH:
        return Weights(model, toy_tokenizer(), arch, TOY_CLIP_CONFIG, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    return Weights(model, open_clip.get_tokenizer(arch), arch, open_clip.get_model_config(arch),
                   open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)


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
    if "logit_scale" in state and "logit_scale" in own and state["logit_scale"].ndim != own["logit_scale"].ndim:
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


def save_checkpoint(weights: "Weights", folder: str | Path, extra: dict | None = None) -> Path:
    """Write a model (safetensors) + JSON sidecar into `folder` atomically (staged, then renamed): open_clip's
    local-dir layout, with the architecture, preprocessing and cliplab's provenance (`extra`) in the sidecar."""
    from safetensors.torch import save_file

    with replaced_folder(folder) as staged:
        state = {k: v.detach().cpu().contiguous() for k, v in weights.model.state_dict().items()}
        save_file(state, str(staged / WEIGHTS_FILE))
        sha = sha256_file(staged / WEIGHTS_FILE)
        sidecar = {"model_cfg": weights.model_cfg,
                   "preprocess_cfg": {"mean": list(weights.mean), "std": list(weights.std)},
                   "cliplab": {**(extra or {}), "arch": weights.arch, "sha256": sha}}
        (staged / CONFIG_FILE).write_text(json.dumps(sidecar, indent=2, sort_keys=True))
    return Path(folder)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


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

    cached, cfg, hub, cache = cached_pretrained(arch, tag, cache_dir)
    if cached:
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
        raise DownloadError(f"downloading pretrained weights {arch!r}/{tag!r} failed: {str(e).splitlines()[0]}") from None


def cached_pretrained(arch: str, tag: str, cache_dir: str | None) -> tuple[str | None, dict, str, str]:
    """(local path if already cached else None, open_clip's pretrained config, hub repo, cache folder) of `arch`/`tag`;
    an unknown architecture or tag is an error."""
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
                return cached, cfg, hub, cache
    return None, cfg, hub, cache


def source_file(path: str | Path) -> Path:
    """The weights file of a checkpoint path: the file itself, or a local-dir folder's safetensors."""
    p = Path(path)
    return p / WEIGHTS_FILE if p.is_dir() else p


def infer_architecture(state: dict) -> list[str]:
    """The architectures ("toy-vit" or open_clip names) whose every tensor shape matches a full CLIP state dict (ViTs;
    a ResNet tower or a custom text tower matches none). Several can match (GELU vs QuickGELU share shapes)."""
    import open_clip

    from cliplab.toy.clip import build_toy_clip

    shapes = {k: tuple(v.shape) for k, v in state.items()}
    conv = shapes.get("visual.conv1.weight")
    if not conv or "text_projection" not in shapes or "positional_embedding" not in shapes:
        return []

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in shapes if k.startswith(prefix)})

    seen = {"width": conv[0], "patch": conv[2], "layers": count("visual.transformer.resblocks."),
            "tokens": shapes.get("visual.positional_embedding", (0,))[0], "embed": shapes["text_projection"][1],
            "text_width": shapes["positional_embedding"][1], "context": shapes["positional_embedding"][0],
            "text_layers": count("transformer.resblocks.")}
    out = []
    if {k: tuple(v.shape) for k, v in build_toy_clip().state_dict().items()} == shapes:
        out.append(TOY_ARCH)
    for arch in open_clip.list_models():
        cfg = open_clip.get_model_config(arch) or {}
        v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
        if not isinstance(v.get("layers"), int) or "hf_model_name" in t or "timm_model_name" in v:
            continue
        size = v.get("image_size", 224)
        size = size[0] if isinstance(size, (list, tuple)) else size
        want = {"width": v.get("width"), "patch": v.get("patch_size"), "layers": v.get("layers"),
                "tokens": (size // v.get("patch_size", 1)) ** 2 + 1, "embed": cfg.get("embed_dim"),
                "text_width": t.get("width"), "context": t.get("context_length", 77), "text_layers": t.get("layers")}
        if want == seen:
            out.append(arch)
    return out


WATCHED_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_FITS: dict[tuple, list[str]] = {}  # (path, size, mtime) → architectures: a sensor tick must not re-read every file


def _fits(path: Path) -> list[str]:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FITS:
        _FITS[key] = infer_architecture(read_state_dict(path))
    return _FITS[key]


def watched_models(folder: str | Path) -> tuple[dict[str, ModelSpec], dict[str, str]]:
    """(key → spec, key → why not) for what is dropped into `folder`: an open_clip local-dir folder (its
    open_clip_config.json + open_clip_model.safetensors), or a checkpoint file whose architecture is named by a
    `<name>.json` beside it ({"arch": ...}) or, failing that, read from its tensor shapes when exactly one
    architecture fits. The key is the file or folder name as a slug (lower case; other characters become '-')."""
    specs, problems = {}, {}
    root = Path(folder).expanduser()
    if not root.is_dir():
        return specs, {str(folder): f"checkpoint folder {folder} does not exist (CLIPLAB_CHECKPOINT_DIR)"}
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or not (p.is_dir() or p.suffix in WATCHED_SUFFIXES):
            continue
        key = re.sub(r"[^a-z0-9._-]+", "-", (p.name if p.is_dir() else p.stem).lower()).strip("-.")
        try:
            validate_key(key, "model key", str(p))
            if p.is_dir():
                if not (p / CONFIG_FILE).is_file() or not (p / WEIGHTS_FILE).is_file():
                    raise CliplabError(f"{p}: a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE} (open_clip's local-dir layout)")
                specs[key] = ModelSpec(key, "checkpoint", path=str(p))
                continue
            named = p.with_suffix(".json")
            if named.is_file():
                arch = json.loads(named.read_text()).get("arch", "")
                if not arch:
                    raise CliplabError(f"{named}: no 'arch' field")
            else:
                fits = _fits(p)
                if len(fits) != 1:
                    raise CliplabError(
                        f"{p}: " + (f"its shapes fit {', '.join(fits)}" if fits else "its shapes fit no known ViT architecture")
                        + f"; name it in {named.name} ({{\"arch\": \"...\"}}) or in a registry entry (kind = \"checkpoint\")")
                arch = fits[0]
            specs[key] = ModelSpec(key, "checkpoint", arch=arch, path=str(p))
        except CliplabError as e:
            problems[key or p.name] = str(e)
    return specs, problems


class ModelZoo(ConfigurableResource):
    """Loads models by key. `registry`: TOML file (optional); `artifacts_root`: where pipeline checkpoints live."""

    registry: str = "registry.toml"
    artifacts_root: str = "./artifacts"
    device: str = "auto"
    cache_dir: str = ""
    # image preprocessing: "shortest" = open_clip's val transform (resize the short side, centre crop);
    # "squash" = the mutual-knowledge reference (resize to the model's size, no crop)
    resize_mode: str = "shortest"
    # a folder watched for dropped-in checkpoints (CLIPLAB_CHECKPOINT_DIR): each becomes a model (watched_models)
    watch_dir: str = ""
    # torch CPU threads per run (CLIPLAB_TORCH_THREADS); 0: cores / max_concurrent_runs for queued runs
    # (resources.threads), the process's default otherwise
    torch_threads: int = 0

    def setup_for_execution(self, context) -> None:
        from resources.threads import available_cores, limit_cpu_threads, queue_limit, threads_per_run

        run = context.dagster_run
        launched = run is not None and run.remote_job_origin is not None
        threads = threads_per_run(self.torch_threads, launched, queue_limit(context.instance) if launched else None,
                                  available_cores())
        if threads is not None:
            limit_cpu_threads(threads)
            if context.log is not None:
                context.log.info(f"torch CPU threads for this run: {threads} "
                                 f"({'CLIPLAB_TORCH_THREADS' if self.torch_threads else 'cores / max_concurrent_runs'})")

    def checkpoint_dir(self, key: str) -> Path:
        """The local folder of `key`'s checkpoint: `<artifacts>/checkpoints/<key>`, or, when the artifact root is on an
        object store, its verified local copy in the root's cache (`resources.objectstore`)."""
        if is_remote(self.artifacts_root):
            return cache_folder(self.artifacts_root) / "checkpoints" / validate_key(key, "model key")
        return Path(self.artifacts_root) / "checkpoints" / validate_key(key, "model key")

    def checkpoint_uri(self, key: str) -> str:
        """Where `key`'s checkpoint is stored: its folder, or `<root>/checkpoints/<key>` on the object store."""
        if is_remote(self.artifacts_root):
            return f"{self.artifacts_root.rstrip('/')}/checkpoints/{validate_key(key, 'model key')}"
        return str(self.checkpoint_dir(key))

    def publish_checkpoint(self, key: str) -> None:
        """After `save_checkpoint` into `checkpoint_dir(key)`: on an object-store root, upload it to `checkpoint_uri`,
        the weights first and then the sidecar, which names the weights' sha256 and is the commit (one PUT each: a
        reader sees the old sidecar or the new one, and `_sync_checkpoint` checks the weights against it). A local
        root has nothing to do."""
        if not is_remote(self.artifacts_root):
            return
        from resources import objectstore

        local, remote = self.checkpoint_dir(key), self.checkpoint_uri(key)
        objectstore.upload(local / WEIGHTS_FILE, f"{remote}/{WEIGHTS_FILE}")
        objectstore.write_bytes(f"{remote}/{CONFIG_FILE}", (local / CONFIG_FILE).read_bytes())

    def _sync_checkpoint(self, key: str, attempts: int = 5) -> None:
        """Object-store root: make the local cache folder a copy of the stored checkpoint whose weights match the
        sidecar's sha256 (downloaded only when the sidecar changed; removed when none is stored). Weights that do not
        match (a writer between its two PUTs) are fetched again; never unpickled, like every checkpoint."""
        import fcntl
        import shutil
        import time

        from resources import objectstore

        local, remote = self.checkpoint_dir(key), self.checkpoint_uri(key)
        local.parent.mkdir(parents=True, exist_ok=True)
        with open(local.parent / f".{key}.lock", "w") as lock:  # processes of one machine share the cache
            fcntl.flock(lock, fcntl.LOCK_EX)
            recover(local)
            for attempt in range(attempts):
                sidecar = objectstore.read_bytes(f"{remote}/{CONFIG_FILE}")
                if sidecar is None:
                    shutil.rmtree(local, ignore_errors=True)
                    return
                if (local / WEIGHTS_FILE).is_file() and (local / CONFIG_FILE).is_file() \
                        and (local / CONFIG_FILE).read_bytes() == sidecar:
                    return  # verified when it was fetched
                want = json.loads(sidecar).get("cliplab", {}).get("sha256", "")
                with replaced_folder(local) as staged:
                    objectstore.download(f"{remote}/{WEIGHTS_FILE}", staged / WEIGHTS_FILE)
                    got = sha256_file(staged / WEIGHTS_FILE)
                    if got == want:
                        (staged / CONFIG_FILE).write_bytes(sidecar)
                if got == want:
                    return
                shutil.rmtree(local, ignore_errors=True)
                time.sleep(0.5 * (attempt + 1))
            raise CliplabError(f"checkpoint {remote}: its weights' sha256 ({got[:16]}…) is not the one its "
                               f"{CONFIG_FILE} names ({want[:16]}…) after {attempts} downloads")

    def delete_stored_checkpoint(self, key: str) -> bool:
        """Object-store root: delete `<root>/checkpoints/<key>/`; returns whether there was one (a local root: False,
        its folder is `checkpoint_dir`)."""
        if not is_remote(self.artifacts_root):
            return False
        import pyarrow.fs as pafs

        from resources import objectstore

        fs, path = objectstore.filesystem(self.checkpoint_uri(key))
        if fs.get_file_info(path).type != pafs.FileType.Directory:
            return False
        fs.delete_dir(path)
        return True

    def spec(self, key: str) -> ModelSpec:
        """The registry's entry (built-ins included), or — for a key whose entry is gone — the checkpoint folder
        the pipeline wrote for it (kind "local-dir")."""
        validate_key(key, "model key")
        reg = load_registry(self.registry, {})  # only its own entry must be valid
        try:
            return reg.model(key)
        except CliplabError:
            if self.watch_dir and key in (watched := watched_models(self.watch_dir))[0]:
                return watched[0][key]
            if self.has_checkpoint(key):  # on an object-store root, fetched into the local cache first
                return ModelSpec(key, "local-dir", path=str(self.checkpoint_dir(key)))
            raise

    def known_keys(self, problems: dict[str, str] | None = None) -> list[str]:
        """Registry models (built-ins included) and pipeline checkpoint folders; with `problems`, invalid registry
        entries are left out and recorded there instead of raising."""
        keys = set(load_registry(self.registry, problems).models)
        if self.watch_dir:
            found, why = watched_models(self.watch_dir)
            keys |= set(found)
            if problems is not None:
                problems.update(why)
        if is_remote(self.artifacts_root):
            keys |= self._stored_keys()
            return sorted(keys)
        root = Path(self.artifacts_root) / "checkpoints"
        if root.is_dir():
            keys |= {p.name for p in root.iterdir() if (p / CONFIG_FILE).is_file()}
        return sorted(keys)

    def preflight(self, key: str, _seen: tuple[str, ...] = ()) -> str | None:
        """Why the `checkpoint` run of `key` cannot succeed here, found cheaply (no loading, no download), or None:
        an unknown architecture or tag, a missing file, weights neither cached nor downloadable (no network), a
        missing or looping base."""
        import open_clip

        if key in _seen:
            return f"model {key!r}: its chain of bases loops ({' → '.join((*_seen, key))})"
        try:
            spec = self.spec(key)
            if spec.kind == "open_clip":
                cached, _, hub, cache = cached_pretrained(spec.arch, spec.pretrained, self.cache_dir or None)
                if not cached and (os.environ.get("HF_HUB_OFFLINE") == "1" or not _hub_reachable()):
                    return (f"model {key!r}: pretrained weights {spec.arch}/{spec.pretrained} are not in the cache "
                            f"({cache}) and there is no network to download them")
            if spec.kind == "checkpoint":
                if spec.tower == "full" and spec.arch and spec.arch != TOY_ARCH and spec.arch not in open_clip.list_models():
                    return f"model {key!r}: unknown architecture {spec.arch!r} (registry field 'arch')"
                if not source_file(Path(spec.path).expanduser()).is_file():
                    return f"model {key!r}: checkpoint file {spec.path} does not exist (registry field 'path')"
            if spec.base and not self.has_checkpoint(spec.base):
                return self.preflight(spec.base, (*_seen, key))
        except CliplabError as e:
            return str(e)
        return None

    def _stored_keys(self) -> set[str]:
        """Object-store root: the keys with a committed checkpoint (a sidecar) under `<root>/checkpoints/`."""
        import pyarrow.fs as pafs

        from resources import objectstore

        fs, path = objectstore.filesystem(f"{self.artifacts_root.rstrip('/')}/checkpoints")
        found = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True, recursive=True))
        return {f.path.rsplit("/", 2)[-2] for f in found if f.base_name == CONFIG_FILE and f.type == pafs.FileType.File}

    def has_checkpoint(self, key: str) -> bool:
        """Whether the `checkpoint` asset has written verified weights for `key` (toy, aft, checkpoint kinds)."""
        if is_remote(self.artifacts_root):
            self._sync_checkpoint(key)
        recover(self.checkpoint_dir(key))
        return (self.checkpoint_dir(key) / CONFIG_FILE).is_file()

    def load(self, key: str) -> LoadedModel:
        """The model of `key` on the zoo's device, preprocessing and tokenizer (one model cached per process)."""
        spec = self.spec(key)
        device = pick_device(self.device)
        root = self.artifacts_root if is_remote(self.artifacts_root) else str(Path(self.artifacts_root).resolve())
        cache_key = (key, device, root, self._fingerprint(spec), self.resize_mode)
        if cache_key not in _CACHE:
            _CACHE.clear()  # one model in memory at a time: GPU memory is the scarce thing
            w = self.weights(key)
            _CACHE[cache_key] = self._finish(spec, w.model, w.tokenizer, device, w.mean, w.std)
        return _CACHE[cache_key]

    def _fingerprint(self, spec: ModelSpec) -> str:
        if spec.kind != "open_clip" and is_remote(self.artifacts_root):
            self._sync_checkpoint(spec.key)  # weights re-made on another machine replace this machine's copy
        cfg = self.checkpoint_dir(spec.key) / CONFIG_FILE
        if spec.kind != "open_clip" and cfg.is_file():
            return f"dir|{cfg.stat().st_mtime_ns}"
        return f"{spec.kind}|{spec.arch}|{spec.pretrained}|{spec.path}|{spec.base}"

    def weights(self, key: str) -> Weights:
        """What analyses of `key` run on (CPU): the checkpoint folder the `checkpoint` asset wrote, else (for
        open_clip tags and local files not yet materialised) the registry's source."""
        spec = self.spec(key)
        if spec.kind != "open_clip" and self.has_checkpoint(key):
            return self.folder_weights(self.checkpoint_dir(key))
        if spec.kind in ("open_clip", "checkpoint"):
            return self.source_weights(spec)
        raise self._not_materialised(spec)

    def _not_materialised(self, spec: ModelSpec) -> CliplabError:
        return CliplabError(
            f"model {spec.key!r} ({spec.kind}) has no checkpoint in {self.checkpoint_dir(spec.key)}: materialise the "
            f"`checkpoint` asset for partition {spec.key!r} first (`cliplab run --model {spec.key}` does)")

    def check_ready(self, key: str) -> None:
        """Raise unless the weights of `key` are there to load (cheap: nothing is loaded or downloaded), so that a
        partition fails on a bad checkpoint before it reads a single image."""
        if (reason := self.preflight(key)) is not None:
            raise CliplabError(reason)
        spec = self.spec(key)
        if spec.kind in ("toy", "aft") and not self.has_checkpoint(key):
            raise self._not_materialised(spec)
        if spec.kind == "local-dir":
            read_sidecar(spec.path)

    def folder_weights(self, folder: str | Path) -> Weights:
        """A checkpoint folder in open_clip's local-dir layout (`save_checkpoint`), verified against its architecture."""
        import open_clip

        folder = Path(folder)
        sidecar = read_sidecar(folder)
        cfg, arch = sidecar["model_cfg"], sidecar.get("cliplab", {}).get("arch", "")
        pre = sidecar.get("preprocess_cfg") or {}
        mean = tuple(pre.get("mean", open_clip.OPENAI_DATASET_MEAN))
        std = tuple(pre.get("std", open_clip.OPENAI_DATASET_STD))
        if arch and arch != TOY_ARCH:
            model, tokenizer, _ = build_architecture(arch, str(folder))
        else:  # the toy CLIP, or a folder from before the sidecar named its architecture
            model = open_clip.CLIP(**cfg)
            tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["text_cfg"].get("context_length", 77))
        load_weights(model, read_state_dict(folder / WEIGHTS_FILE), str(folder / WEIGHTS_FILE))
        return Weights(model.eval(), tokenizer, arch or TOY_ARCH, cfg, mean, std)

    def source_sha256(self, key: str) -> str:
        """sha256 of the file a registry entry's weights come from (the cached open_clip file, or the local file)."""
        spec = self.spec(key)
        if spec.kind == "open_clip":
            return sha256_file(download_pretrained(spec.arch, spec.pretrained, self.cache_dir))
        if spec.kind in ("checkpoint", "local-dir"):
            return sha256_file(source_file(spec.path))
        raise CliplabError(f"model {key!r} ({spec.kind}) has no source file: its weights come from its checkpoint partition")

    def source_weights(self, spec: ModelSpec) -> Weights:
        """The weights a registry entry points at (open_clip tag, local file, or image tower + base), verified."""
        import open_clip

        if spec.kind == "open_clip":
            model, tokenizer, cfg = build_architecture(spec.arch, f"model {spec.key!r}")
            path = download_pretrained(spec.arch, spec.pretrained, self.cache_dir)
            load_weights(model, read_state_dict(path), str(path))
            pcfg = open_clip.get_pretrained_cfg(spec.arch, spec.pretrained)
            mean = tuple(pcfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
            std = tuple(pcfg.get("std", open_clip.OPENAI_DATASET_STD))
            return Weights(model.eval(), tokenizer, spec.arch, cfg, mean, std)
        if spec.kind == "checkpoint" and spec.tower == "visual":
            if spec.base == spec.key:
                raise CliplabError(f"model {spec.key!r}: its base cannot be itself")
            base = self.weights(spec.base)
            state = read_state_dict(spec.path)
            if state and all(k.startswith("visual.") for k in state):
                state = {k[len("visual."):]: v for k, v in state.items()}
            load_weights(base.model.visual, state, f"{spec.path} (image tower of {spec.base!r})")
            return base
        if spec.kind == "checkpoint" and Path(spec.path).is_dir():
            return self.folder_weights(spec.path)
        if spec.kind == "checkpoint":
            model, tokenizer, cfg = build_architecture(spec.arch, f"model {spec.key!r}")
            load_weights(model, read_state_dict(spec.path), spec.path)
            return Weights(model.eval(), tokenizer, spec.arch, cfg, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        if spec.kind == "local-dir":
            return self.folder_weights(spec.path)
        raise CliplabError(f"model {spec.key!r} ({spec.kind}) is made by the pipeline, not read from a source")

    def random_init(self, arch: str, seed: int = 0) -> LoadedModel:
        """A real open_clip architecture with random weights (tests and benchmarks; loads offline)."""
        import open_clip
        import torch

        torch.manual_seed(seed)
        model = open_clip.create_model(arch, pretrained=None)
        spec = ModelSpec(f"{arch.lower()}.random-s{seed}", "open_clip", arch=arch, pretrained="random")
        return self._finish(spec, model, open_clip.get_tokenizer(arch), pick_device(self.device),
                            open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)

    def transform(self, model, mean, std):
        """((H, W), the model's val transform: PIL image → normalised (3, H, W)) under the zoo's resize mode."""
        import open_clip

        if self.resize_mode not in RESIZE_MODES:
            raise CliplabError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        size = model.visual.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        return size, open_clip.image_transform(size, is_train=False, mean=mean, std=std, resize_mode=self.resize_mode)

    def _finish(self, spec, model, tokenizer, device, mean, std) -> LoadedModel:
        size, preprocess = self.transform(model, mean, std)
        model = model.to(device).eval()
        family = "resnet" if hasattr(model.visual, "attnpool") else "vit"
        return LoadedModel(spec.key, spec, model, preprocess, tokenizer, device, size, tuple(mean), tuple(std), family)
