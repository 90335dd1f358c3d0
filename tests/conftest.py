"""Shared fixtures: a real Dagster instance and a real artifact root with the main job materialised once.

`quick_root`: the whole default graph with a toy CLIP trained for a few steps on a small toyworld
(plumbing: files, schemas, partitions). `trained_root` (slow): the default configuration, i.e. what
`cliplab run` does on a fresh machine (with APGD and ROAR on smaller subsets: EVALUATION_IN_TESTS); the
acceptance tests read it, and every test that does is in the `acceptance` tier (marked here, at collection).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def pytest_configure(config):
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:  # a worker of `pytest -n N`: N workers each with every core's threads would oversubscribe the CPU
        from resources.threads import available_cores, limit_cpu_threads

        limit_cpu_threads(max(1, available_cores() // int(workers)))


@pytest.hookimpl(tryfirst=True)  # before `-m` selects
def pytest_collection_modifyitems(config, items):
    # The default toy CLIP trains for 1,600 steps (≈ 9 min of two cores here) and its AFT acceptance fine-tunes it
    # twice: the tests of that model are a tier of their own (`-m acceptance`), slow by definition.
    for item in items:
        if "trained_root" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.acceptance)
            item.add_marker(pytest.mark.slow)
    # Longest first, so that the suite on `-n 2 --dist loadfile` does not end on one worker running the browser,
    # drop-in, explorer and deployment files (100–200 s each) one after the other, as it did in xdist's default order
    # (files with the most tests first: these have one or two): files with a slow test of the suite, then the rest of
    # tests/e2e, then everything else, each in collection order (scripts/test.sh passes --no-loadscope-reorder).
    slow = {i.path for i in items if i.get_closest_marker("slow") and not i.get_closest_marker("acceptance")}
    items.sort(key=lambda item: (item.path not in slow, "e2e" not in item.path.parts))


def run_main(root: Path, steps: int | None = None, n_train: int | None = None, n_val: int | None = None, instance=None,
             model: str = "toy-vit.s0", dataset: str = "toyworld", registry: str | None = None,
             analysis_config: dict | None = None):
    """Materialise (model, dataset) into `root` as `cliplab run` does; returns (outcome, instance, seconds)."""
    from dagster import DagsterInstance

    from pipelines.definitions import resources_from_env
    from pipelines.runs import materialise

    # the default graph includes the head spans, whose text banks are published files: offline, from ../shared/data
    os.environ.setdefault("CLIPLAB_REFERENCE_DIR", str(SHARED / "data"))
    instance = instance or DagsterInstance.ephemeral()
    sizes = {k: v for k, v in (("n_train", n_train), ("n_val", n_val)) if v is not None}
    t0 = time.perf_counter()
    outcome = materialise(instance, model, dataset, resources_from_env(str(root), registry),
                          steps={model: steps} if steps is not None else None, toyworld=sizes or None,
                          analysis_config=analysis_config)
    return outcome, instance, time.perf_counter() - t0


# The trained root runs the default configuration, except the evaluation suite's two slowest assets, which no test
# reads from it (the AFT acceptance test runs its own evaluation): APGD (≈ 3.6 s per toyworld image) and ROAR on
# smaller subsets than toyworld's defaults (64 images; 1,000 / 500).
EVALUATION_IN_TESTS = {"zero_shot_robustness": {"images": 16}, "roar": {"train_images": 300, "test_images": 150}}
# The quick roots' plumbing runs every asset too, with APGD on 4 images and ROAR on 60 / 30 (toyworld's defaults, 64
# and 1,000 / 500, were 60 of quick_root's 91 s): the evaluation assets' numbers are tested on their own roots.
QUICK_EVALUATION = {"zero_shot_robustness": {"images": 4}, "roar": {"train_images": 60, "test_images": 30}}


@pytest.fixture(scope="session")
def quick_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick") / "artifacts"
    result, instance, _ = run_main(root, steps=4, n_train=240, n_val=96, analysis_config=QUICK_EVALUATION)
    assert result.success
    return root, instance, result


@pytest.fixture
def toy_root(quick_root, tmp_path):
    """A fresh artifact root holding only the quick toy CLIP's checkpoint and toyworld (240 train, 96 val)."""
    import shutil

    src, _, _ = quick_root
    dst = tmp_path / "artifacts"
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    shutil.copytree(src / "toyworld", dst / "toyworld")
    return dst


@pytest.fixture(scope="session")
def trained_root(tmp_path_factory):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker would train its own copy, on its share of the cores
        pytest.fail("the acceptance tier trains the default toy CLIP once, in one process: run it with -n 0 "
                    "(bash scripts/test.sh -m acceptance -n 0)", pytrace=False)
    root = tmp_path_factory.mktemp("trained") / "artifacts"
    result, instance, seconds = run_main(root, analysis_config=EVALUATION_IN_TESTS)
    assert result.success
    return root, instance, result, seconds


@pytest.fixture
def quick_evaluation() -> dict:
    """QUICK_EVALUATION, as `analysis_config` for a test's own `main` run on the quick toyworld."""
    return QUICK_EVALUATION


def _assert_figure(meta: dict, title: str) -> bytes:
    """The picture `title` in materialisation metadata: a Markdown image served by URL from its content-addressed copy
    (never base64 in the event log), whose digest is that of the PNG saved at `<title> (file)`. Returns the PNG."""
    import hashlib
    import re

    from assets._report import FIGURE_URL_DEFAULT

    def value(v):
        return getattr(v, "value", v)

    md, path = value(meta[title]), value(meta[f"{title} (file)"])
    base = re.escape(os.environ.get("CLIPLAB_FIGURE_URL", FIGURE_URL_DEFAULT).rstrip("/"))
    m = re.fullmatch(rf"!\[{re.escape(title)}\]\({base}/_sha256/([0-9a-f]{{20}})\.png\)", md)
    assert m, md[:200]
    png = Path(path).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and hashlib.sha256(png).hexdigest()[:20] == m.group(1)
    served = next(p for p in Path(path).parents if p.name == "_figures") / "_sha256" / f"{m.group(1)}.png"
    assert served.read_bytes() == png
    return png


@pytest.fixture
def assert_figure():
    """_assert_figure, for tests (a fixture: the suite imports test modules by path, so conftest is no module)."""
    return _assert_figure
