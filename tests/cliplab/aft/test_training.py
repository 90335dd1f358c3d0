"""AFT training on the toy CLIP: a few steps lower the adversarial loss; a SIGKILLed run resumes to the same weights."""

import copy
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cliplab.aft.pgd import attack_distance, generators
from cliplab.aft.training import AFTConfig, Batch, batch_indices, train_aft
from cliplab.errors import CliplabError
from cliplab.pixels import PixelEncoder
from cliplab.toy import toyworld
from cliplab.toy.clip import MEAN, STD, build_toy_clip

REPO = Path(__file__).resolve().parents[3]


def toy_pixels(n: int, seed: int = 0) -> torch.Tensor:
    images = toyworld.generate(seed, "train", n, 64).images
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255


def stream(pixels: torch.Tensor, cfg: AFTConfig):
    def batches(start: int):
        for step in range(start, cfg.steps):
            idx = batch_indices(len(pixels), cfg.batch_size, step, cfg.seed)
            yield Batch(idx, pixels[idx])

    return batches


def test_batches_are_epoch_permutations():
    steps = [batch_indices(10, 3, s, seed=4) for s in range(6)]  # 3 batches per epoch, one image left out
    first, second = torch.cat(steps[:3]), torch.cat(steps[3:])
    assert len(set(first.tolist())) == 9 and len(set(second.tolist())) == 9
    assert not torch.equal(first, second)
    assert torch.equal(batch_indices(10, 3, 4, seed=4), steps[4])
    with pytest.raises(CliplabError, match="fewer than one batch"):
        batch_indices(2, 3, 0, seed=0)


def test_a_few_steps_lower_the_adversarial_loss_and_distance():
    """Adam's first update moves every weight of a random-init tower by ≈ lr (the loss jumps from its PGD-at-init
    value); from there the adversarial loss falls, and the embedding's sensitivity to a fresh attack drops."""
    torch.manual_seed(0)
    visual = build_toy_clip().visual.eval()
    tower, frozen = PixelEncoder(visual, MEAN, STD), PixelEncoder(copy.deepcopy(visual), MEAN, STD)
    x = toy_pixels(16)
    cfg = AFTConfig(eps=4, steps=10, batch_size=16, lr=1e-4, pgd_steps=3, warmup_fraction=0.3)
    attack = {"eps": 4 / 255, "steps": 5}
    before = attack_distance(tower, x, gens=generators(range(16), "cpu"), **attack).mean().item()
    seen = []
    state = train_aft(tower, frozen, stream(x, cfg), cfg, patch=8, on_step=lambda s, m: seen.append((s, m)))
    after = attack_distance(tower, x, gens=generators(range(16), "cpu"), **attack).mean().item()
    loss = state.history["loss"]
    assert loss[-1] < 0.6 * max(loss[1:3]), loss
    assert after < 0.97 * before, (before, after)
    assert [s for s, _ in seen] == list(range(10)) and state.step == 10
    assert all(np.isfinite(m["loss"]) and m["images_per_s"] > 0 for _, m in seen)
    assert all(not p.requires_grad for p in frozen.parameters())
    torch.manual_seed(0)
    assert torch.equal(frozen.visual.conv1.weight, build_toy_clip().visual.conv1.weight)  # the target tower never moved


_RUN = textwrap.dedent('''
    import copy, os, signal, sys
    import numpy as np, torch
    from safetensors.torch import save_file
    torch.set_num_threads(1)
    from cliplab.aft.training import AFTConfig, Batch, batch_indices, train_aft
    from cliplab.pixels import PixelEncoder
    from cliplab.toy import toyworld
    from cliplab.toy.clip import MEAN, STD, build_toy_clip
    from resources.training_state import load_state, save_state

    state_dir, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.manual_seed(0)
    visual = build_toy_clip().visual.eval()
    tower, frozen = PixelEncoder(visual, MEAN, STD), PixelEncoder(copy.deepcopy(visual), MEAN, STD)
    x = torch.from_numpy(np.ascontiguousarray(toyworld.generate(0, "train", 24, 64).images)).permute(0, 3, 1, 2).float() / 255
    cfg = AFTConfig(variant="{variant}", eps=4, steps=6, batch_size=8, lr=1e-3, pgd_steps=2, save_every=2,
                    noise_in_outer=True)

    def batches(start):
        for step in range(start, cfg.steps):
            idx = batch_indices(len(x), cfg.batch_size, step, cfg.seed)
            yield Batch(idx, x[idx])

    def save(state):
        save_state(state_dir, state, "fp")
        if state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    final = train_aft(tower, frozen, batches, cfg, patch=8, resume=load_state(state_dir, "fp"), save=save)
    save_file(final.tower, out)
''')


@pytest.mark.parametrize("variant", ["l1_huber", "group"])
def test_a_killed_run_resumes_to_the_same_weights(tmp_path, variant):
    from safetensors.torch import load_file

    script = tmp_path / "run.py"
    script.write_text(_RUN.replace("{variant}", variant))

    def run(state_dir, out, kill_at):
        return subprocess.run([sys.executable, str(script), str(state_dir), str(out), str(kill_at)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)

    straight = run(tmp_path / "a", tmp_path / "a.safetensors", -1)
    assert straight.returncode == 0, straight.stderr
    killed = run(tmp_path / "b", tmp_path / "b.safetensors", 4)
    assert killed.returncode == -9  # SIGKILL after the step-4 save
    assert not (tmp_path / "b.safetensors").exists()
    resumed = run(tmp_path / "b", tmp_path / "b.safetensors", -1)
    assert resumed.returncode == 0, resumed.stderr
    a, b = load_file(tmp_path / "a.safetensors"), load_file(tmp_path / "b.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the run did train: the weights moved from the initialisation
    torch.manual_seed(0)
    init = build_toy_clip().visual.state_dict()
    assert not torch.equal(a["visual.conv1.weight"], init["conv1.weight"])
