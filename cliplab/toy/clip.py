"""The toy CLIP: a small open_clip `CLIP` trained contrastively on toyworld captions.

Architecture is data (`TOY_CLIP_CONFIG`, open_clip's model-config format), the loop reads top to
bottom (nanoGPT style): sample a batch of (image, caption) pairs, symmetric InfoNCE (open_clip's
`ClipLoss`), AdamW with linear warm-up and cosine decay. Same seed and inputs → same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from cliplab.schedule import warmup_cosine

# ViT with real multi-head attention: 4 layers × 4 heads (head_width 32), 64 px images, 8 px patches →
# an 8×8 patch grid. The text tower is as small; the vocabulary is open_clip's BPE, so any caption
# tokenises offline.
TOY_CLIP_CONFIG: dict = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
# open_clip's (OpenAI's) normalisation, so the toy model is preprocessed like every other CLIP.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1600
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup: int = 50
    seed: int = 0


def build_toy_clip(config: dict | None = None):
    """A randomly initialised open_clip `CLIP` from the toy config (or any open_clip model config)."""
    import open_clip

    return open_clip.CLIP(**(config or TOY_CLIP_CONFIG))


def toy_tokenizer(config: dict | None = None):
    import open_clip

    return open_clip.tokenizer.SimpleTokenizer(context_length=(config or TOY_CLIP_CONFIG)["text_cfg"]["context_length"])


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images (B, H, W, 3) → normalised float tensor (B, 3, H, W), as open_clip's val transform."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def train_toy_clip(
    images: np.ndarray,
    captions: list[str],
    cfg: TrainConfig = TrainConfig(),
    config: dict | None = None,
    on_step: Callable[[int, float, float], None] | None = None,
):
    """Train a toy CLIP on (image, caption) pairs.

    images: (n, H, W, 3) uint8; captions: n strings. `on_step(step, loss, images_per_s)` reports
    progress. Returns (model in eval mode, list of per-step losses).
    """
    import open_clip

    torch.manual_seed(cfg.seed)
    model = build_toy_clip(config)
    tokens = toy_tokenizer(config)(captions)  # (n, context_length), once for all steps
    n = len(captions)
    decay = [p for name, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in name]
    no_decay = [p for name, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in name)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    model.train()
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        idx = torch.randint(0, n, (cfg.batch_size,), generator=gen)
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, cfg.steps, cfg.warmup, cfg.lr)
        img_f, txt_f, scale = model(images_to_tensor(images[idx.numpy()]), tokens[idx])
        loss = loss_fn(img_f, txt_f, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if on_step is not None:
            on_step(step, losses[-1], (step + 1) * cfg.batch_size / (time.perf_counter() - t0))
    return model.eval(), losses
