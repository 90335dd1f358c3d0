"""A real browser (slow): Debian's chromium, driven by Playwright by `executable_path`, materialises one asset of the
toy partition from its asset page in `cliplab ui`, then finds the run's success, the partition status and a metadata
plot served by the figure server. With CLIPLAB_SCREENSHOTS=<folder> it also saves the README's screenshots."""

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CLIPLAB = str(Path(sys.executable).parent / "cliplab")
PARTITION = "toyworld|toy-vit.s0"


def chromium() -> str:
    """Debian's chromium (browsers cannot be downloaded here), installed with apt-get when missing (CI runs as root)."""
    found = shutil.which("chromium")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium (as root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=900, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, env=env, timeout=1800, capture_output=True)
    return shutil.which("chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            assert time.time() < deadline, f"{url} did not answer within {seconds:.0f} s"
            time.sleep(2)


@pytest.mark.slow
def test_materialise_from_the_asset_page_in_chromium(tmp_path, cliplab_ui):
    from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
    from playwright.sync_api import expect, sync_playwright

    browser_path = chromium()
    port, figures = _free_port(), f"http://127.0.0.1:{_free_port()}"
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "CLIPLAB_ARTIFACTS": str(tmp_path / "art"),
           "HF_HUB_OFFLINE": "1", "CLIPLAB_FIGURE_URL": figures}
    # a user's first `cliplab run` (small, for time), then the UI on the instance it leaves
    run = subprocess.run([CLIPLAB, "run", "--steps", "20", "--n-train", "256", "--n-val", "96"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stderr[-2000:]
    cliplab_ui(env, port)
    url = f"http://127.0.0.1:{port}"
    shots = Path(os.environ["CLIPLAB_SCREENSHOTS"]) if os.environ.get("CLIPLAB_SCREENSHOTS") else None
    _wait_for(f"{url}/server_info", 300)
    with sync_playwright() as p, DagsterInstance.from_config(str(tmp_path / "dh")) as instance:
        before = {r.run_id for r in instance.get_runs()}
        browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)
        try:
            page.goto(f"{url}/assets/patch_features", wait_until="networkidle")
            page.get_by_role("button", name="Materialize…").click()
            dialog = page.get_by_role("dialog")
            page.wait_for_load_state("networkidle")
            chosen = dialog.get_by_text("1 partition", exact=True)
            for _ in range(30):  # "All" picks from the partition keys the dialog has loaded by then
                for everything in dialog.get_by_role("button", name="All", exact=True).all():  # dataset, model
                    everything.click()
                if chosen.is_visible():
                    break
                time.sleep(1)
            expect(chosen).to_be_visible()
            launch = dialog.get_by_role("button", name=re.compile("Launch"))
            expect(launch).to_have_text("Launch 1 run")
            launch.click()

            done, deadline = None, time.time() + 900
            while done is None and time.time() < deadline:
                runs = [r for r in instance.get_runs(RunsFilter(tags={"dagster/partition": PARTITION}))
                        if r.run_id not in before]
                if runs and runs[0].status in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE):
                    done = runs[0]
                time.sleep(3)
            assert done is not None, "the run launched from the asset page did not finish within 15 min"
            assert done.status == DagsterRunStatus.SUCCESS, done.run_id
            assert "patch_features" in {k.path[-1] for k in done.asset_selection or ()}

            page.goto(f"{url}/runs/{done.run_id}", wait_until="networkidle")
            expect(page.get_by_text("Success", exact=True).first).to_be_visible()

            page.goto(f"{url}/assets/patch_features?view=partitions", wait_until="networkidle")
            expect(page.get_by_text(re.compile(r"Materialized \(1\)")).first).to_be_visible()
            expect(page.get_by_text("toy-vit.s0", exact=True).first).to_be_visible()
            if shots:
                page.screenshot(path=str(shots / "ui_partitions.png"))

            page.goto(f"{url}/assets/patch_features", wait_until="networkidle")
            row = page.locator("tr", has_text="token PCA").first
            row.scroll_into_view_if_needed()
            plot = page.locator(f"img[src^='{figures}/_sha256/']").first
            expect(plot).to_be_visible()
            # served, decoded and drawn, not a broken-image icon
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=plot.element_handle())
            if shots:
                plot.scroll_into_view_if_needed()
                page.screenshot(path=str(shots / "ui_metadata_plot.png"))
                page.set_viewport_size({"width": 1600, "height": 900})
                page.goto(f"{url}/assets/mi_curves?view=lineage&lineageScope=upstream&lineageDepth=8",
                          wait_until="networkidle")
                time.sleep(5)  # the graph lays itself out after the data arrives
                page.screenshot(path=str(shots / "ui_lineage.png"))
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"))  # kept in pytest's tmp dir for a look
            raise
        finally:
            browser.close()
