"""Resumable training state on disk: safetensors for every tensor, JSON for the rest, never a pickle.

A state folder holds `state.safetensors` (tower weights as `tower.<name>`, AdamW moments as
`opt.<param index>.<name>`) and `state.json` (step, AdamW param groups, non-tensor moments, history and a
`fingerprint` of what the run trains: config, base weights, data). A save writes a new folder beside the
old one and swaps it in with renames, so a process killed at any instant leaves the previous complete state
or the new one. A state whose fingerprint differs from the run's is not resumed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cliplab.aft.training import TrainState
from cliplab.errors import CliplabError
from resources.atomic import recover, replaced_folder

TENSORS, META = "state.safetensors", "state.json"


def save_state(folder: str | Path, state: TrainState, fingerprint: str) -> Path:
    """Write `state` atomically into `folder` (replacing what was there)."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {f"tower.{k}": v.contiguous() for k, v in state.tower.items()}
    moments = {}
    for i, slots in state.optimizer["state"].items():
        for name, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"opt.{i}.{name}"] = value.contiguous()
            else:
                moments.setdefault(str(i), {})[name] = value
    meta = {"step": state.step, "fingerprint": fingerprint, "param_groups": state.optimizer["param_groups"],
            "moments": moments, "history": state.history}
    with replaced_folder(folder) as staged:
        save_file(tensors, str(staged / TENSORS))
        (staged / META).write_text(json.dumps(meta))
    return folder


def load_state(folder: str | Path, fingerprint: str) -> TrainState | None:
    """The saved state if `folder` holds one for this fingerprint, else None."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    recover(folder)
    if not (folder / META).is_file() or not (folder / TENSORS).is_file():
        return None
    try:
        meta = json.loads((folder / META).read_text())
        tensors = load_file(str(folder / TENSORS))
    except (json.JSONDecodeError, SafetensorError, OSError) as e:
        raise CliplabError(f"training state in {folder} is unreadable ({e}); delete the folder to start over") from None
    if meta.get("fingerprint") != fingerprint:
        return None
    tower = {k[len("tower."):]: v for k, v in tensors.items() if k.startswith("tower.")}
    slots: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            slots.setdefault(int(i), {})[name] = v
    for i, extra in meta["moments"].items():
        slots.setdefault(int(i), {}).update(extra)
    optimizer = {"state": dict(sorted(slots.items())), "param_groups": meta["param_groups"]}
    return TrainState(int(meta["step"]), tower, optimizer, meta["history"])


def clear_state(folder: str | Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
