"""`cliplab explore` through its own request path: a real server (uvicorn, free port) on the quick root, asked over
HTTP for the page and for /api/panel (the same computation as data). Its numbers are the `cliplab heads` CLI's (the
same PNG bytes, in process) and the stored assets' (head_analysis_examples' tables, visual_concept_descriptors,
mi_curves, saliency_maps); bad input is a message on the page and the server lives on."""

import io
import json
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import polars as pl
import pytest

M, D = "toy-vit.s0", "toyworld"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path):
    """(url, stop) of the explorer app served by uvicorn in a thread of this process."""
    import uvicorn

    from pipelines.explorer.app import create_app
    from pipelines.explorer.core import Explorer

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(Explorer(str(root))), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the explorer did not start"
        time.sleep(0.1)

    def stop():
        server.should_exit = True
        thread.join(30)

    return f"http://127.0.0.1:{port}", stop


@pytest.fixture(scope="module")
def served(quick_root):
    root = quick_root[0]
    url, stop = start_server(root)
    yield url, root
    stop()


def get(url: str, path: str, **params) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def api(url: str, **params) -> dict:
    status, body = get(url, "/api/panel", model=M, dataset=D, **params)
    assert status == 200, body[:500]
    return json.loads(body)[params.get("model", M)]


def post_file(url: str, name: str, data: bytes, **fields) -> tuple[int, str, str]:
    """multipart/form-data POST /upload as a browser sends it: (status, final URL, body)."""
    boundary = "----cliplabtest"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/upload", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.url, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, "", e.read().decode()


def cli_png(root: Path, tmp_path: Path, monkeypatch, *args: str) -> str:
    """sha256 of the PNG `cliplab heads ... --out` writes, run in this process (same threads, same numbers)."""
    import hashlib

    from pipelines.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    out = tmp_path / f"cli-{len(list(tmp_path.glob('cli-*')))}.png"
    assert main(["--artifacts", str(root), "heads", *args, "--out", str(out)]) == 0
    return hashlib.sha256(out.read_bytes()).hexdigest()


def stored(root: Path, asset: str) -> pl.DataFrame:
    return pl.read_parquet(root / asset / f"model={M}" / f"dataset={D}" / "part-0.parquet")


def assert_frames_equal(rows: list[dict], frame: pl.DataFrame, rtol: float = 1e-5) -> None:
    got = pl.DataFrame(rows)
    assert got.columns == frame.columns
    for c in frame.columns:
        if frame[c].dtype.is_float():
            np.testing.assert_allclose(got[c].to_numpy(), frame[c].to_numpy(), rtol=rtol, atol=1e-7, err_msg=c)
        else:
            assert got[c].to_list() == frame[c].to_list(), c


def example_setting(root: Path) -> tuple[str, int, int, list[str]]:
    """The image, head and texts head_analysis_examples used (its own choice, re-derived as it does)."""
    from assets.heads.maps import _preferred_bank

    image = pl.read_parquet(root / "dataset_manifest" / f"model={M}" / f"dataset={D}" / "part-0.parquet")["image_id"][0]
    seg = stored(root, "head_topic_segmentation")
    layer, head = int(seg["layer"][0]), int(seg["head"][0])
    spans = stored(root, "head_spans")
    spans = spans.filter((pl.col("layer") == layer) & (pl.col("head") == head)
                         & (pl.col("bank") == _preferred_bank(spans["bank"].unique().to_list())))
    return image, layer, head, spans.sort("rank")["text"].head(5).to_list()


def test_head_panels_match_the_cli_and_the_stored_assets(served, tmp_path, monkeypatch):
    url, root = served
    image, layer, head, texts = example_setting(root)

    seg = api(url, panel="segment", image=image, layer=layer, head=head)
    assert seg["error"] is None
    assert_frames_equal(seg["tables"]["per text"], stored(root, "head_topic_segmentation"))
    assert seg["pictures"][0]["sha256"] == cli_png(root, tmp_path, monkeypatch, "segment", "--image-id", image,
                                                   "--layer", str(layer), "--head", str(head))
    assert {s["asset"] for s in seg["sources"]} >= {"head_spans", "checkpoint"}
    assert all(s["written"] for s in seg["sources"])

    con = api(url, panel="contrast", image=image, text_a=texts[0], text_b=texts[1])
    assert_frames_equal(con["tables"]["map statistics"], stored(root, "head_contrastive_segmentation"))
    assert con["pictures"][0]["sha256"] == cli_png(root, tmp_path, monkeypatch, "contrast", "--image-id", image,
                                                   "--text-a", texts[0], "--text-b", texts[1])

    inn = api(url, panel="image-nn", image=image, layer=layer, head=head)
    assert_frames_equal(inn["tables"]["neighbours (dot product of c_{l,h})"], stored(root, "head_image_neighbours"))
    assert inn["pictures"][0]["sha256"] == cli_png(root, tmp_path, monkeypatch, "image-nn", "--image-id", image,
                                                   "--layer", str(layer), "--head", str(head))

    tnn = api(url, panel="text-nn", text=texts[0], layer=layer, head=head)
    assert_frames_equal(tnn["tables"]["neighbours (t · c_{l,h})"], stored(root, "head_text_neighbours"))
    assert tnn["pictures"][0]["sha256"] == cli_png(root, tmp_path, monkeypatch, "text-nn", "--text", texts[0],
                                                   "--layer", str(layer), "--head", str(head))

    prop = stored(root, "head_property_neighbours")["property"][0]
    pnn = api(url, panel="property", image=image, prop=prop)
    assert_frames_equal(pnn["tables"]["neighbours (cosine of the mean contribution of the property's heads)"],
                        stored(root, "head_property_neighbours"))
    assert pnn["pictures"][0]["sha256"] == cli_png(root, tmp_path, monkeypatch, "property-nn", "--image-id", image,
                                                   "--property", prop)

    table = api(url, panel="heads")
    per_head = pl.DataFrame(table["tables"][next(iter(table["tables"]))])
    labels = stored(root, "head_labels")
    assert len(per_head) == labels.select("layer", "head").unique().height
    assert set(per_head["label"].to_list()) <= set(labels["label"].to_list())
    scores = pl.DataFrame(table["tables"]["association and entanglement (head_scores)"])
    np.testing.assert_allclose(sorted(scores["association"].to_list()), sorted(stored(root, "head_scores")["association"].to_list()))


def test_concept_panel_matches_the_stored_assets_and_the_recomputation(served):
    import pyarrow.parquet as pq

    from assets.mutual.knowledge import read_descriptor_bank
    from pipelines.explorer.concepts import describe_concepts
    from pipelines.explorer.core import Explorer

    url, root = served
    dv = stored(root, "visual_concept_descriptors")
    image = dv["image_id"][0]
    panel = api(url, panel="concepts", image=image)
    assert panel["error"] is None, panel["error"]
    rows = pl.DataFrame(panel["tables"]["D_v: descriptors per concept (OT)"])
    want = dv.filter(pl.col("image_id") == image).sort("branch", "concept")
    assert rows["descriptor"].to_list() == want["descriptor"].to_list()
    mi = pl.DataFrame(panel["tables"]["MI and AUC"]).sort("branch")
    curves = stored(root, "mi_curves").filter(pl.col("image_id") == image).sort("branch")
    np.testing.assert_allclose(mi["image AUC"].to_numpy(), curves["auc"].to_numpy())
    np.testing.assert_allclose(mi["image MI"].to_numpy(), curves["mi"].to_numpy())
    assert len(panel["pictures"]) == 2 and {s["asset"] for s in panel["sources"]} >= {"visual_concept_descriptors", "mi_curves"}

    # the on-the-fly path (what an upload gets), fed the stored concept grids, gives the stored rows
    ex = Explorer(str(root))
    img = ex.input_image(M, D, image)
    meta = pq.read_schema(root / "concept_clusters" / f"model={M}" / f"dataset={D}" / "part-0.parquet").metadata
    L = int(meta[b"L"])
    cc = stored(root, "concept_clusters").filter(pl.col("image_id") == image)
    from assets.mutual.concepts import patch_grid

    grid = patch_grid(ex.store, M, D)
    grids = {}
    for b in ("pca", "kmeans"):
        g = np.full(grid[0] * grid[1], -1, dtype=np.int64)
        g[cc["patch"].to_numpy()] = cc[f"{b}_concept"].to_numpy()
        grids[b] = g
    top = int(ex.datasets.spec(D).options.get("dv_top", 500))
    stored_embedding = stored(root, "patch_features").filter(pl.col("image_id") == image)["embedding"][0].to_numpy()
    again = describe_concepts(ex.model(M), img.pixels, grids, grid, L, read_descriptor_bank(ex.lance, M, D), top=top,
                              image_embedding=stored_embedding)
    assert again["descriptor_index"].to_list() == want["descriptor_index"].to_list()
    np.testing.assert_allclose(np.stack(again["ellipse"].to_list()), np.stack(want["ellipse"].to_list()), atol=1e-4)


def test_saliency_panel_matches_the_stored_maps(served):
    url, root = served
    maps = stored(root, "saliency_maps")
    image = maps["image_id"][0]
    panel = api(url, panel="saliency", image=image)
    assert panel["error"] is None, panel["error"]
    got = pl.DataFrame(panel["tables"]["maps"]).filter(pl.col("model") == M)
    for r in got.iter_rows(named=True):
        want = np.asarray(maps.filter((pl.col("image_id") == image) & (pl.col("method") == r["method"]))["map"][0], np.float32)
        assert abs(r["mean"] - want.mean()) < 2e-3 and abs(r["max"] - want.max()) < 2e-3, r


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # the huge upload: decoded reduced
def test_page_upload_and_bad_input(served):
    from PIL import Image

    url, root = served
    status, page = get(url, "/")
    assert status == 200 and "val/" in page and "<select name='model'" in page
    image = stored(root, "visual_concept_descriptors")["image_id"][0]
    status, page = get(url, "/", model=M, dataset=D, image=image, panel="concepts")
    assert status == 200 and "class='error'" not in page and page.count("data:image/png;base64,") > 20
    # a stored image exported as a PNG upload: its panels, computed on the fly
    from pipelines.explorer.core import Explorer

    buf = io.BytesIO()
    Explorer(str(root)).analyses(M, D).stored_pil([image])[0].save(buf, format="PNG")
    status, where, page = post_file(url, "mine.png", buf.getvalue(), model=M, dataset=D, panel="concepts")
    assert status == 200 and "image=upload%3A" in where and "class='error'" not in page, page[-2000:]
    assert "mine.png" in page and "computed for this image" in page
    ref = urllib.parse.parse_qs(urllib.parse.urlparse(where).query)["image"][0]
    seg = api(url, panel="segment", image=ref, layer=3, head=1)
    assert seg["error"] is None and len(seg["pictures"]) == 1
    # bad input: a message on the page, and the server answers the next request
    status, _, page = post_file(url, "notes.txt", b"not an image at all", model=M, dataset=D)
    assert status == 400 and "notes.txt is not an image" in page and "Traceback" not in page
    huge = io.BytesIO()
    Image.new("RGB", (12000, 9000), "red").save(huge, format="PNG")  # 108 Mpx, decoded reduced
    status, where, page = post_file(url, "huge.png", huge.getvalue(), model=M, dataset=D, panel="segment")
    assert status == 200 and "class='error'" not in page
    status, page = get(url, "/", model="vit-b-32.openai", dataset=D)
    assert status == 200 and "is not materialised" in page and "cliplab run --model vit-b-32.openai" in page
    for params in ({"image": "val/nope", "panel": "segment"}, {"image": image, "panel": "segment", "layer": "x"},
                   {"image": image, "panel": "segment", "layer": "99"}, {"panel": "property", "image": image, "prop": "zzz"},
                   {"image": "upload:0000", "panel": "concepts"}):
        status, page = get(url, "/", model=M, dataset=D, **params)
        assert status == 200 and "class='error'" in page and "Traceback" not in page, params
    assert get(url, "/healthz") == (200, "ok")


def test_resnet_models_have_no_head_panels(quick_root, tmp_path):
    """A real ResNet CLIP (random-init open_clip RN50, a registry checkpoint): every head panel says it has no heads
    (before any partition check: materialising would not give it heads), nothing raises."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from pipelines.explorer.app import ExplorerApp
    from pipelines.explorer.core import Explorer

    torch.manual_seed(0)
    state = open_clip.create_model("RN50", pretrained=None).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "rn50.safetensors"))
    registry = tmp_path / "registry.toml"
    registry.write_text(f'[models."rn50.random"]\nkind = "checkpoint"\narch = "RN50"\npath = "{tmp_path / "rn50.safetensors"}"\n')
    ex = Explorer(str(quick_root[0]), str(registry))
    rn = "rn50.random"
    for name in ("heads", "property", "segment", "contrast", "image-nn", "text-nn"):
        panel = ex.panel(name, rn, D, "val/000004", layer=0, head=0) if name in ("segment", "image-nn", "text-nn") \
            else ex.panel(name, rn, D, "val/000004")
        assert panel.error and "ResNet CLIP: it has no attention heads" in panel.error, (name, panel.error)
    # the page itself: the ResNet's partition is not materialised, and it says how to materialise it
    page = ExplorerApp(ex).page({"model": rn, "dataset": D, "panel": "segment", "image": "val/000004"}).body.decode()
    assert "is not materialised" in page and f"cliplab run --model {rn}" in page and "Traceback" not in page


# ---- a real browser (slow) ------------------------------------------------------------------------------------------
AFT = "toy-vit.s0.aft-e4-short"


@pytest.mark.slow
def test_explorer_in_chromium(quick_root, quick_evaluation, tmp_path):
    """Debian's chromium through Playwright: pick the toy model and an image, see the concept overlay and a topic
    segmentation heat map, upload a PNG and see its panels, upload a text file and see the error, switch to a second
    model partition (the toy CLIP's AFT fine-tune, 2 steps) and compare the two side by side. With
    CLIPLAB_SCREENSHOTS=<folder> it saves the README's explorer_*.png."""
    import os
    import shutil
    import sys

    from dagster import DagsterInstance
    from playwright.sync_api import expect, sync_playwright

    sys.path.insert(0, str(Path(__file__).parent))
    from test_browser import chromium  # the project's way to get Debian's chromium

    from pipelines.definitions import resources_from_env
    from pipelines.runs import materialise

    root = tmp_path / "artifacts"
    shutil.copytree(quick_root[0], root)
    os.environ.setdefault("CLIPLAB_REFERENCE_DIR", str(Path(__file__).resolve().parents[3] / "shared" / "data"))
    outcome = materialise(DagsterInstance.ephemeral(), AFT, D, resources_from_env(str(root)), steps={AFT: 2},
                          analysis_config=quick_evaluation)
    assert outcome.failure() is None
    from PIL import Image

    from pipelines.explorer.core import Explorer

    upload = tmp_path / "mine.png"
    Explorer(str(root)).analyses(M, D).stored_pil(["val/000007"])[0].save(upload)
    text_file = tmp_path / "notes.txt"
    text_file.write_text("certainly not an image\n")
    Image.new("RGB", (4, 4)).save(tmp_path / "unused.png")
    shots = Path(os.environ["CLIPLAB_SCREENSHOTS"]) if os.environ.get("CLIPLAB_SCREENSHOTS") else None

    url, stop = start_server(root)
    browser_path = chromium()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(120_000)

            def figure_loaded(caption: str, column: int = 0):
                fig = page.locator("#panels .col").nth(column).locator("figure", has_text=caption).locator("img").first
                expect(fig).to_be_visible()
                page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=fig.element_handle())
                return fig

            try:
                page.goto(f"{url}/", wait_until="load")
                page.select_option("#model", M)
                page.select_option("#dataset", D)
                page.click("#show")
                page.wait_for_load_state("load")
                page.locator(".thumbs a").nth(2).click()  # an image of the dataset
                page.wait_for_load_state("load")
                expect(page.locator("#current")).to_contain_text("val/")
                figure_loaded("visual concepts")
                figure_loaded("MI curves")
                expect(page.locator("#panels")).to_contain_text("visual_concept_descriptors")
                expect(page.locator(".error")).to_have_count(0)
                if shots:
                    page.screenshot(path=str(shots / "explorer_concepts.png"), full_page=True)

                page.select_option("#panel", "segment")
                page.click("#show")
                page.wait_for_load_state("load")
                page.fill("input[name=layer]", "3")
                page.fill("input[name=head]", "1")
                page.click("#show")
                page.wait_for_load_state("load")
                figure_loaded("L3.H1")
                expect(page.locator("#panels table").first).to_contain_text("peak_patch_row")

                page.set_input_files("#file", str(upload))
                page.click("#upload")
                page.wait_for_load_state("load")
                expect(page.locator("#current")).to_contain_text("mine.png")
                figure_loaded("L3.H1")
                page.select_option("#panel", "concepts")
                page.click("#show")
                page.wait_for_load_state("load")
                figure_loaded("visual concepts")
                expect(page.locator("#panels")).to_contain_text("computed for this image")

                page.set_input_files("#file", str(text_file))
                page.click("#upload")
                page.wait_for_load_state("load")
                expect(page.locator("#message")).to_contain_text("notes.txt is not an image")

                page.goto(f"{url}/?model={M}&dataset={D}&image=val/000007&panel=segment&layer=3&head=1", wait_until="load")
                page.select_option("#model", AFT)
                page.click("#show")
                page.wait_for_load_state("load")
                expect(page.locator("#panels h3").first).to_contain_text(AFT)
                figure_loaded("L3.H1")
                expect(page.locator(".error")).to_have_count(0)

                page.select_option("#model", M)
                page.select_option("#model2", AFT)
                page.click("#show")
                page.wait_for_load_state("load")
                expect(page.locator("#panels .col")).to_have_count(2)
                figure_loaded("L3.H1", 0)
                figure_loaded("L3.H1", 1)
                expect(page.locator("#panels h3").nth(1)).to_contain_text(AFT)
                if shots:
                    page.locator("#panels").screenshot(path=str(shots / "explorer_compare.png"))
                page.select_option("#panel", "saliency")
                page.click("#show")
                page.wait_for_load_state("load")
                figure_loaded(AFT, 0)  # base and AFT side by side in one grid
            except Exception:
                page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
                raise
            finally:
                browser.close()
    finally:
        stop()
