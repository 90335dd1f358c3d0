"""One AFT training step (10 PGD steps + the outer AdamW step): images/s and peak memory. Prints a table; not a test.

    python benchmarks/aft_step.py [--device cpu|cuda] [--toy-batch 128] [--vit-batch 8] [--steps 4]

Each row runs `cliplab.aft.training.train_aft` in a fresh process on random-init weights (speed does not depend on
them) and random pixels of the model's input size; the first step (allocator warm-up) is not timed, the median of
the others is. Peak memory: the process's peak RSS on CPU (wait4), `torch.cuda.max_memory_allocated` on CUDA.
Rows: the toy CLIP (64 px) and open_clip ViT-B/16 at 224 px, in float32 on CPU; on CUDA in bf16 autocast, and
ViT-B/16 also with activation checkpointing. The published run: ≈ 21 images/s on 2 × RTX 4090 (ViT-B/16, batch 128).
"""

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

STEP = """
import copy, json, statistics, sys, time
import torch
from cliplab.aft.training import AFTConfig, Batch, train_aft
from cliplab.pixels import PixelEncoder
from cliplab.toy.clip import MEAN, STD, build_toy_clip
arch, batch, steps, device, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
torch.manual_seed(0)
if arch == "toy-vit":
    visual = build_toy_clip().visual
else:
    import open_clip
    visual = open_clip.create_model(arch, pretrained=None).visual
size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
tower = PixelEncoder(visual, MEAN, STD).to(device)
frozen = PixelEncoder(copy.deepcopy(visual), MEAN, STD).to(device)
x = torch.rand(batch, 3, size, size, device=device)
cfg = AFTConfig(steps=steps, batch_size=batch, lr=1e-5, save_every=10**6, grad_checkpointing=ckpt)
def batches(start):
    for s in range(start, steps):
        yield Batch(torch.arange(batch) + s * batch, x)
stamps = []
def on_step(step, m):
    if device == "cuda":
        torch.cuda.synchronize()
    stamps.append(time.perf_counter())
t0 = time.perf_counter()
train_aft(tower, frozen, batches, cfg, patch=visual.patch_size[0], on_step=on_step)
times = [b - a for a, b in zip(stamps, stamps[1:])]
peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
print(json.dumps({"step_s": statistics.median(times), "images_per_s": batch / statistics.median(times),
                  "cuda_peak_mib": peak}))
"""


def run(arch: str, batch: int, steps: int, device: str, checkpointing: bool = False) -> dict:
    """One row in a fresh process; its peak RSS from wait4."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        os.execve(sys.executable, [sys.executable, "-c", STEP, arch, str(batch), str(steps), device,
                                   "1" if checkpointing else "0"], env)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        raise SystemExit(f"{arch} row failed (status {status})")
    row = json.loads(out.strip().splitlines()[-1])
    row["rss_mib"] = usage.ru_maxrss / 1024
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--toy-batch", type=int, default=128)
    p.add_argument("--vit-batch", type=int, default=8, help="ViT-B/16 batch (CPU); 128 on CUDA")
    p.add_argument("--steps", type=int, default=4, help="steps per row (the first is not timed)")
    args = p.parse_args()
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = torch.get_num_threads()
    rows = [("toy CLIP, 64 px", "toy-vit", args.toy_batch, False)]
    vit_batch = args.vit_batch if device == "cpu" else max(args.vit_batch, 128)
    rows.append(("ViT-B/16, 224 px", "ViT-B-16", vit_batch, False))
    if device == "cuda":
        rows.append(("ViT-B/16, 224 px, act. ckpt", "ViT-B-16", vit_batch, True))
    precision = "bf16 autocast" if device == "cuda" else "float32"
    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {threads} threads"
    print(f"AFT step = 10 PGD steps + 1 outer step ({precision}, {name})")
    print(f"{'model':32s} {'batch':>6s} {'s/step':>8s} {'images/s':>9s} {'peak MiB':>9s}")
    for label, arch, batch, ckpt in rows:
        r = run(arch, batch, args.steps, device, ckpt)
        peak = r["cuda_peak_mib"] if device == "cuda" else r["rss_mib"]
        print(f"{label:32s} {batch:6d} {r['step_s']:8.2f} {r['images_per_s']:9.1f} {peak:9.0f}")


if __name__ == "__main__":
    main()
