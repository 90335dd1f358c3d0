"""An `aft` checkpoint partition: the base model's image tower adversarially fine-tuned (`cliplab.aft`),
saved with the base's text tower so it loads like any open_clip model, and described before vs after."""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import replace

import numpy as np

from assets._report import png_metadata
from cliplab import plots
from cliplab.aft.pgd import attack_distance, generators, sample_seeds
from cliplab.aft.training import PIXEL, AFTConfig, Batch, batch_indices, train_aft
from cliplab.errors import CliplabError
from cliplab.pixels import PixelEncoder, split_preprocess
from cliplab.zeroshot import class_embeddings, top_k
from resources.datasets import DatasetCatalog, DatasetView
from resources.models import ModelZoo, Weights, pick_device, save_checkpoint
from resources.registry import ModelSpec, aft_config
from resources.store import ArtifactStore
from resources.training_state import clear_state, load_state, save_state

CODE_VERSION = "aft-1"  # bump when the training maths changes: it is part of every AFT checkpoint's provenance
EVAL_IMAGES = 2000  # clean zero-shot top-1 before vs after, on at most this many eval images
ATTACK_IMAGES = 256  # embedding distance under a fresh PGD attack, before vs after
ATTACK_STEPS = 10


def finetune_checkpoint(context, spec: ModelSpec, steps: int | None, zoo: ModelZoo, datasets: DatasetCatalog,
                        store: ArtifactStore) -> dict:
    key = spec.key
    if spec.base == key:
        raise CliplabError(f"AFT model {key!r}: its base cannot be itself")
    try:
        zoo.spec(spec.base)
    except CliplabError as e:
        raise CliplabError(f"AFT model {key!r}: unknown base model {spec.base!r} ({e})") from None
    base = zoo.weights(spec.base)  # the base's verified checkpoint: fails here, before any data is read, if it does not verify
    visual = base.model.visual
    patch = visual.patch_size[0] if hasattr(visual, "patch_size") else None
    aft_config(spec).regulariser(patch)  # `group` on a ResNet fails here
    view = datasets.open_training(spec.data)
    n = len(view.manifest)
    cfg = aft_config(spec, n_train=n)
    if steps is not None:
        cfg = replace(cfg, steps=steps)
    base_sha = _weights_sha(zoo, spec.base)
    device = pick_device(zoo.device)
    _, preprocess = zoo.transform(base.model, base.mean, base.std)
    to_pixels, mean, std = split_preprocess(preprocess)
    tower = PixelEncoder(visual, mean, std).to(device)
    frozen = PixelEncoder(copy.deepcopy(visual), mean, std).to(device).eval()
    text = _text_targets(cfg, base, view, datasets, device) if cfg.variant == "supervised" else None

    fingerprint = hashlib.sha256(json.dumps(
        {"cfg": cfg.as_dict(), "base": spec.base, "base_sha256": base_sha, "data": spec.data, "n": n,
         "code": CODE_VERSION}, sort_keys=True).encode()).hexdigest()
    state_dir = zoo.checkpoint_dir(key).parent / ".training" / key
    resume = load_state(state_dir, fingerprint)
    if resume is not None:
        context.log.info(f"AFT {key}: resuming from step {resume.step}/{cfg.steps} ({state_dir})")

    def batches(start: int):
        plan = (batch_indices(n, cfg.batch_size, s, cfg.seed).tolist() for s in range(start, cfg.steps))
        for idx, pixels in datasets.planned_batches(view, to_pixels, plan):
            yield Batch(idx, pixels, text[idx] if text is not None else None)

    last = [0.0]

    def log(step: int, m: dict):
        now = time.perf_counter()
        if now - last[0] >= 10 or step in (0, cfg.steps - 1):
            last[0] = now
            context.log.info(f"AFT {key} step {step + 1}/{cfg.steps}: loss {m['loss']:.4f}, ‖f(x+δ) − I_x‖ "
                             f"{m['adv_distance']:.4f}, lr {m['lr']:.2e}, {m['images_per_s']:.1f} images/s")

    context.log.info(f"AFT {key}: {cfg.variant} from {spec.base} on {spec.data} ({n} images), ε = {cfg.eps}/255, "
                     f"η = {cfg.eta}/255, σ = {cfg.sigma}/255, {cfg.steps} steps × {cfg.batch_size}, on {device}")
    t0 = time.perf_counter()
    final = train_aft(tower, frozen, batches, cfg, patch=patch, resume=resume,
                      save=lambda s: save_state(state_dir, s, fingerprint), on_step=log)
    seconds = time.perf_counter() - t0
    rate = (cfg.steps - (resume.step if resume else 0)) * cfg.batch_size / max(seconds, 1e-9)

    eval_key = spec.options.get("eval_data", spec.data)
    metrics = _before_after(frozen, tower, base, datasets.open(eval_key), datasets, to_pixels, cfg, device)
    base.model.visual = tower.visual
    base.model.cpu().eval()
    folder = save_checkpoint(Weights(base.model, base.tokenizer, base.arch, base.model_cfg, base.mean, base.std),
                             zoo.checkpoint_dir(key), extra={
        "kind": "aft", "base": spec.base, "base_sha256": base_sha, "data": spec.data, "eval_data": eval_key,
        "variant": cfg.variant, "eps": cfg.eps, "eta": cfg.eta, "sigma": cfg.sigma, "steps": cfg.steps,
        "seed": cfg.seed, "config": cfg.as_dict(), "code_version": CODE_VERSION, "train_seconds": round(seconds, 1),
        "metrics": metrics})
    clear_state(state_dir)
    context.log.info(f"AFT {key}: done in {seconds:.0f} s; clean top-1 {metrics['clean top-1 before']:.4f} → "
                     f"{metrics['clean top-1 after']:.4f}; attack distance {metrics['attack distance before']:.4f} → "
                     f"{metrics['attack distance after']:.4f}; checkpoint {folder}")
    history = final.history
    return {
        **metrics,
        "base": spec.base, "training data": spec.data, "variant": cfg.variant,
        "eps (1/255)": cfg.eps, "eta (1/255)": cfg.eta, "sigma (1/255)": cfg.sigma, "steps": cfg.steps,
        "batch size": cfg.batch_size, "config": cfg.as_dict(), "training seconds": round(seconds, 1),
        "training images/s": round(rate, 2), "resumed from step": resume.step if resume else 0,
        "final loss": history["loss"][-1], "final ‖f(x+δ) − I_x‖": history["adv_distance"][-1],
        **png_metadata(plots.loss_curve(history["loss"], f"AFT {key}", ylabel="mean ‖f(x+δ) − I_x‖²"),
                       store.figure_path(f"{key}-aft-loss.png"), "loss curve"),
    }


def _weights_sha(zoo: ModelZoo, key: str) -> str:
    """The sha256 the base's checkpoint partition recorded (its data version), or the registry source's."""
    from resources.models import read_sidecar

    if zoo.spec(key).kind != "open_clip" and zoo.has_checkpoint(key):
        return read_sidecar(zoo.checkpoint_dir(key))["cliplab"]["sha256"]
    return zoo.source_sha256(key)


def _text_targets(cfg: AFTConfig, base: Weights, view: DatasetView, datasets: DatasetCatalog, device):
    """(n, D) unit text embeddings of every training image's caption, or of its class prompt (`supervised`)."""
    import torch

    captions = datasets.captions(view) if cfg.target == "caption" else None
    if cfg.target == "caption" and captions is None:
        raise CliplabError(f"dataset {view.key!r} has no captions: use target = 'class_text' for the supervised variant")
    texts = captions or [view.templates[0].format(c) for c in view.manifest["class_name"].to_list()]
    model = base.model.to(device)
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), 1024):
            out.append(torch.nn.functional.normalize(model.encode_text(base.tokenizer(texts[i:i + 1024]).to(device)).float(), dim=-1).cpu())
    model.cpu()
    return torch.cat(out)


def _before_after(frozen: PixelEncoder, tower: PixelEncoder, base: Weights, view: DatasetView, datasets: DatasetCatalog,
                  to_pixels, cfg: AFTConfig, device) -> dict:
    """Clean zero-shot top-1 and the embedding distance under a fresh L∞ PGD attack at the training ε, base vs fine-tuned."""
    import torch

    with torch.inference_mode():  # the text tower is the base's, unchanged, on the CPU
        weights = class_embeddings(base.model.encode_text, base.tokenizer, view.class_names, view.templates).to(device)
    rng = np.random.default_rng(cfg.seed)
    rows = np.sort(rng.permutation(len(view.manifest))[:EVAL_IMAGES])
    subset = DatasetView(view.key, view.spec, view.class_names, view.templates, view.manifest[rows.tolist()], split=view.split)
    hits = {"before": 0, "after": 0}
    dist = {"before": [], "after": []}
    seen = 0
    for rows_, pixels in datasets.image_batches(subset, to_pixels, batch_size=min(cfg.batch_size, 256)):
        pixels = pixels.to(device)
        labels = torch.as_tensor(rows_["label"].to_numpy(writable=True), device=device)
        for name, enc in (("before", frozen), ("after", tower)):
            with torch.inference_mode():
                emb = torch.nn.functional.normalize(enc(pixels).float(), dim=-1)
            hits[name] += int((top_k(emb, weights, k=1)[0][:, 0] == labels).sum())
            take = min(len(pixels), ATTACK_IMAGES - seen)
            if take > 0:
                gens = generators(sample_seeds(cfg.seed + 1, 0, torch.arange(seen, seen + take)), device)
                d = attack_distance(enc, pixels[:take], cfg.eps * PIXEL, gens, steps=ATTACK_STEPS,
                                    step_size=max(cfg.eps / 4, 0.25) * PIXEL)
                dist[name].append(d.cpu())
        seen += len(pixels)
    total = len(subset.manifest)
    before, after = torch.cat(dist["before"]), torch.cat(dist["after"])
    return {
        "clean top-1 before": hits["before"] / total, "clean top-1 after": hits["after"] / total,
        "eval images": total, "eval dataset": view.key,
        "attack distance before": float(before.mean()), "attack distance after": float(after.mean()),
        "attack images": len(before), "attack": f"L∞ PGD, ε = {cfg.eps}/255, {ATTACK_STEPS} steps, on unit embeddings",
    }
