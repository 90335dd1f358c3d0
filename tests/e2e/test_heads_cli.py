"""`cliplab heads ...` as a user runs it: subprocesses against a quick root with the `heads` job materialised."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "pipelines.cli"]


@pytest.fixture(scope="module")
def root(quick_root, tmp_path_factory):
    """A copy of the quick root with head_contributions (in-process materialise); no CLI path reads the text banks."""
    from dagster import DagsterInstance, materialize

    from assets.heads import contributions as heads
    from assets.partitions import partition_key
    from pipelines.definitions import resources_from_env

    src, _, _ = quick_root
    root = tmp_path_factory.mktemp("heads-cli") / "artifacts"
    # without the head-span tables the main job made: the error paths below need them absent
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("head_*"))
    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("model", ["toy-vit.s0"])
    instance.add_dynamic_partitions("dataset", ["toyworld"])
    result = materialize([heads.head_contributions], instance=instance,
                         partition_key=partition_key("toy-vit.s0", "toyworld"), resources=resources_from_env(str(root)))
    assert result.success
    return root


def heads(root: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([*CLI, "--artifacts", str(root), "heads", *args], check=False, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def first_id(root: Path) -> str:
    import polars as pl

    return pl.read_parquet(root / "dataset_manifest/model=toy-vit.s0/dataset=toyworld/part-0.parquet")["image_id"].sort()[0]


def assert_png(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100


def test_segment_prints_the_frame_and_writes_the_heat_map(root, tmp_path):
    out = tmp_path / "figs" / "seg.png"
    p = heads(root, tmp_path, "segment", "--image-id", first_id(root), "--layer", "3", "--head", "1",
              "--text", "something red", "--text", "a grassy background", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shape: (2, 9)" in p.stdout and "something red" in p.stdout and "peak_patch_row" in p.stdout
    assert f"figure: {out}" in p.stdout
    assert_png(out)


def test_contrast_on_an_image_file(root, tmp_path):
    import polars as pl

    t = pl.read_parquet(root / "toyworld/split=val/part-0.parquet").head(1)
    image = tmp_path / "mine.png"
    image.write_bytes(t["image_png"][0])
    out = tmp_path / "contrast.png"
    p = heads(root, tmp_path, "contrast", "--image", str(image), "--text-a", "something red",
              "--text-b", "a blue sky", "--heads", "3.0,3.1,2.2", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    row = next(line for line in p.stdout.splitlines() if "something red − a blue sky" in line)
    assert row.split()[-2] == "3"  # last column `heads`: 3 heads aggregated
    assert_png(out)


def test_image_and_text_neighbours(root, tmp_path):
    image_id = first_id(root)
    p = heads(root, tmp_path, "image-nn", "--image-id", image_id, "--layer", "2", "--head", "0",
              "--out", str(tmp_path / "inn.png"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shape: (8, 5)" in p.stdout and "rank" in p.stdout
    assert_png(tmp_path / "inn.png")
    p = heads(root, tmp_path, "text-nn", "--text", "a dotted pattern", "--layer", "3", "--head", "2", "--k", "3")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "shape: (3, 6)" in p.stdout and "a dotted pattern" in p.stdout


def test_property_neighbours_in_process(root, capsys):
    """The same entry point in process (each subprocess costs seconds of imports)."""
    from pipelines.cli import main

    assert main(["--artifacts", str(root), "heads", "property-nn", "--image-id", first_id(root), "--heads", "3.0,3.1"]) == 0
    out = capsys.readouterr().out
    assert "shape: (4, 5)" in out and "cosine" in out and "3.0,3.1" in out


def test_bad_input_is_one_clear_line(root, tmp_path):
    p = heads(root, tmp_path, "text-nn", "--text", "x", "--layer", "7", "--head", "0")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "cliplab: error: layer 7 head 0 does not exist in toy-vit.s0" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args, message", [
    (["segment", "--image-id", "val/424242", "--layer", "0", "--head", "0", "--text", "x"],
     "image_id 'val/424242' is not in dataset 'toyworld'"),
    (["segment", "--image", "/nonexistent/cat.jpg", "--layer", "0", "--head", "0", "--text", "x"],
     "image file /nonexistent/cat.jpg does not exist"),
    (["image-nn", "--image-id", "val/000000", "--layer", "3", "--head", "9"], "layer 3 head 9 does not exist"),
    (["text-nn", "--text", "x", "--layer", "0", "--head", "0", "--model", "vit-b-99.nope"], "unknown model"),
    (["text-nn", "--text", "x", "--layer", "0", "--head", "0", "--k", "0"], "--k must be ≥ 1"),
    (["property-nn", "--image-id", "val/000000", "--property", "colour"], "head_labels is not materialised"),
])
def test_bad_input_messages(root, capsys, args, message):
    """The same entry point in process (a subprocess per case would cost seconds of imports each)."""
    from pipelines.cli import main

    assert main(["--artifacts", str(root), "heads", *args]) == 2
    assert message in capsys.readouterr().err


def test_unmaterialised_partition(root, tmp_path, capsys):
    from pipelines.cli import main

    bare = tmp_path / "bare"
    shutil.copytree(root / "checkpoints", bare / "checkpoints")
    shutil.copytree(root / "toyworld", bare / "toyworld")
    assert main(["--artifacts", str(bare), "heads", "image-nn", "--image-id", first_id(root),
                 "--layer", "3", "--head", "1"]) == 2
    err = capsys.readouterr().err
    assert "head_contributions is not materialised" in err and "`heads` job" in err
