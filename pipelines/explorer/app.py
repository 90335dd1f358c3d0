"""The explorer's Starlette application: one server-rendered page, no JavaScript framework, no external asset.

GET /            the page: pickers (model, dataset, compare-with, panel, image), the image browser, the upload form
                 and the chosen panel for one or two models; every picture is an inline PNG (data: URI)
POST /upload     multipart/form-data (parsed with the standard library's email parser): the image file, then a
                 redirect to the page showing it; a bad file is a message on the page (status 400)
GET /api/panel   the same panel as JSON (tables at full precision, pictures as sha256): for scripts and tests
GET /healthz     "ok"

Errors are messages on the page; an unexpected exception is logged on the server and answered with a page naming
it, never a stack trace.
"""

from __future__ import annotations

import base64
import html
import logging
import urllib.parse

import polars as pl
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from starlette.routing import Route

from cliplab.errors import CliplabError
from pipelines.explorer.core import MAX_UPLOAD_BYTES, PANELS, Explorer, Panel

log = logging.getLogger("cliplab.explorer")
STATE = ("model", "dataset", "model2", "panel", "image", "layer", "head", "texts", "text_a", "text_b", "heads",
         "text", "prop", "k", "q", "page")
PAGE_SIZE = 24

CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
header{background:#263238;color:#fff;padding:8px 16px}header h1{font-size:18px;margin:0}
main{padding:10px 16px}fieldset{border:1px solid #ccc;margin:6px 0;padding:6px 10px;background:#fff}
label{margin-right:10px;font-size:13px}input,select,textarea{font-size:13px}
.error{background:#fdecea;border:1px solid #e57373;color:#b71c1c;padding:8px;margin:6px 0;white-space:pre-wrap}
.note{color:#455a64;font-size:12px;margin:2px 0}.sources{font-size:12px;color:#555}
.cols{display:flex;gap:14px;align-items:flex-start}.col{flex:1;min-width:0;background:#fff;border:1px solid #ddd;padding:8px}
.col img.fig{max-width:100%}table{border-collapse:collapse;font-size:12px;margin:4px 0}
td,th{border:1px solid #ddd;padding:2px 5px;vertical-align:top}th{background:#eceff1}
.thumbs a{display:inline-block;margin:2px;text-align:center;font-size:10px;color:#333;text-decoration:none}
.thumbs a.sel img{outline:3px solid #ff6f00}.thumbs img{width:72px;height:72px;display:block}
#busy{display:none;position:fixed;top:8px;right:12px;background:#ff6f00;color:#fff;padding:6px 12px;border-radius:4px}
"""
JS = """
function busy(){var b=document.getElementById('busy');b.style.display='block';var t0=Date.now();
setInterval(function(){b.textContent='computing… '+((Date.now()-t0)/1000).toFixed(0)+' s'},500);}
document.addEventListener('submit',busy);
document.addEventListener('click',function(e){if(e.target.closest('a.go'))busy();});
"""


def esc(x) -> str:
    return html.escape(str(x), quote=True)


def _url(state: dict, **changes) -> str:
    merged = {**state, **changes}
    return "/?" + urllib.parse.urlencode({k: v for k, v in merged.items() if v not in (None, "")})


def _png(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def _table(frame: pl.DataFrame, max_rows: int = 60) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            return "; ".join(cell(x) for x in v)
        return esc(v)

    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in frame.head(max_rows).iter_rows())
    return f"<table><tr>{head}</tr>{rows}</table>"


def _int(state: dict, name: str, default: int) -> int:
    raw = state.get(name, "")
    try:
        return int(raw) if raw not in ("", None) else default
    except ValueError:
        raise CliplabError(f"{name} must be a whole number, got {raw!r}") from None


class ExplorerApp:
    def __init__(self, explorer: Explorer):
        self.ex = explorer

    # ---- pieces of the page --------------------------------------------------------------------------------------
    def _select(self, name: str, options: list[tuple[str, str]], value: str) -> str:
        opts = "".join(f"<option value='{esc(v)}'{' selected' if v == value else ''}>{esc(t)}</option>" for v, t in options)
        return f"<select name='{name}' id='{name}'>{opts}</select>"

    def _pickers(self, s: dict, parts: list) -> str:
        have = {m for m, d in parts if d == s["dataset"]}
        models = [(m, m + ("" if m in have else " (not materialised)")) for m in sorted(self.ex.model_keys(), key=lambda m: (m not in have, m))]
        datasets = [(d, d) for d in self.ex.dataset_keys()]
        hidden = "".join(f"<input type='hidden' name='{k}' value='{esc(s[k])}'>" for k in ("image", "q", "page") if s.get(k))
        panel = s["panel"]
        params = ""
        if panel in ("segment", "image-nn", "text-nn"):
            params += (f"<label>layer <input name='layer' size='3' value='{esc(s.get('layer', ''))}' placeholder='last'></label>"
                       f"<label>head <input name='head' size='3' value='{esc(s.get('head', '') or 0)}'></label>")
        if panel == "segment":
            params += (f"<label>texts (one a line; empty = the head's TextSpan texts)<br><textarea name='texts' rows='3' cols='40'>"
                       f"{esc(s.get('texts', ''))}</textarea></label>")
        if panel == "contrast":
            params += (f"<label>text a <input name='text_a' value='{esc(s.get('text_a') or 'something yellow')}'></label>"
                       f"<label>text b <input name='text_b' value='{esc(s.get('text_b') or 'something white')}'></label>"
                       f"<label>heads <input name='heads' size='12' value='{esc(s.get('heads', ''))}' placeholder='last 4 layers'></label>")
        if panel == "text-nn":
            params += f"<label>text <input name='text' value='{esc(s.get('text', ''))}' placeholder='top TextSpan text'></label>"
        if panel == "property":
            try:
                props = self.ex.properties(s["model"], s["dataset"])
            except CliplabError:
                props = []
            params += "<label>property " + self._select("prop", [("", "(first)")] + [(p, p) for p in props], s.get("prop", "")) + "</label>"
        if panel in ("property", "image-nn", "text-nn"):
            params += f"<label>k <input name='k' size='3' value='{esc(s.get('k', ''))}' placeholder='default'></label>"
        return (f"<form method='get' action='/' id='pick'><fieldset><legend>partition and panel</legend>"
                f"<label>model {self._select('model', models, s['model'])}</label>"
                f"<label>dataset {self._select('dataset', datasets, s['dataset'])}</label>"
                f"<label>compare with {self._select('model2', [('', '(none)')] + models, s.get('model2', ''))}</label>"
                f"<label>panel {self._select('panel', list(PANELS.items()), panel)}</label>{hidden}"
                f"<div>{params}</div><button type='submit' id='show'>Show</button></fieldset></form>")

    def _browser(self, s: dict) -> str:
        page = max(0, _int(s, "page", 0))
        frame, total = self.ex.images(s["model"], s["dataset"], s.get("q", ""), page * PAGE_SIZE, PAGE_SIZE)
        thumbs = self.ex.thumbnails(s["model"], s["dataset"], frame["image_id"].to_list())
        links = "".join(
            f"<a class='go{' sel' if r['image_id'] == s.get('image') else ''}' href='{esc(_url(s, image=r['image_id']))}' "
            f"title='{esc(r['class_name'])}'><img src='{_png(thumbs[r['image_id']])}' alt='{esc(r['image_id'])}'>"
            f"{esc(r['image_id'])}<br>{esc(r['class_name'])}</a>" for r in frame.iter_rows(named=True))
        pager = ""
        if page > 0:
            pager += f"<a href='{esc(_url(s, page=page - 1))}'>‹ previous</a> "
        if (page + 1) * PAGE_SIZE < total:
            pager += f"<a href='{esc(_url(s, page=page + 1))}'>next ›</a>"
        keep = "".join(f"<input type='hidden' name='{k}' value='{esc(v)}'>" for k, v in s.items()
                       if v and k not in ("q", "page"))
        return (f"<fieldset><legend>image: browse or search the dataset ({total} images)</legend>"
                f"<form method='get' action='/'>{keep}<input name='q' value='{esc(s.get('q', ''))}' placeholder='image id or class'>"
                f"<button type='submit'>Search</button></form><div class='thumbs'>{links}</div>{pager}</fieldset>")

    def _uploader(self, s: dict) -> str:
        keep = "".join(f"<input type='hidden' name='{k}' value='{esc(v)}'>" for k, v in s.items()
                       if v and k not in ("image", "q", "page"))
        return (f"<fieldset><legend>or upload an image</legend><form method='post' action='/upload' enctype='multipart/form-data'>"
                f"{keep}<input type='file' name='file' id='file'><button type='submit' id='upload'>Upload</button></form></fieldset>")

    def _panel_html(self, model: str, p: Panel, s: dict) -> str:
        out = [f"<h3>{esc(model)}: {esc(p.title)}</h3>"]
        if p.sources:
            out.append("<div class='sources'>reads: " + "; ".join(
                f"<code>{esc(a)}</code> [{esc(part)}] written {esc(when or 'unknown')}" for a, part, when in p.sources) + "</div>")
        if p.error:
            out.append(f"<div class='error'>{esc(p.error)}</div>")
        out += [f"<div class='note'>{esc(n)}</div>" for n in p.notes]
        for caption, png in p.pictures:
            out.append(f"<figure><img class='fig' src='{_png(png)}' alt='{esc(caption)}'><figcaption class='note'>{esc(caption)}</figcaption></figure>")
        for caption, frame in p.tables:
            out.append(f"<div class='note'>{esc(caption)}</div>{_table(frame)}")
            if "image_id" in frame.columns and s["panel"] in ("property", "image-nn", "text-nn"):
                out.append("<div class='note'>open a neighbour: " + " ".join(
                    f"<a class='go nn' href='{esc(_url(s, image=i))}'>{esc(i)}</a>" for i in frame["image_id"].to_list()) + "</div>")
        out.append(f"<div class='note'>{p.seconds * 1000:.0f} ms</div>")
        return "<div class='col'>" + "".join(out) + "</div>"

    def page(self, s: dict, message: str | None = None, status: int = 200) -> HTMLResponse:
        parts = self.ex.partitions()
        if not s.get("model") or not s.get("dataset"):
            first = parts[0] if parts else ("toy-vit.s0", "toyworld")
            s["model"], s["dataset"] = s.get("model") or first[0], s.get("dataset") or first[1]
        s["panel"] = s.get("panel") if s.get("panel") in PANELS else "concepts"
        body = [self._pickers(s, parts)]
        if message:
            body.append(f"<div class='error' id='message'>{esc(message)}</div>")
        if (s["model"], s["dataset"]) not in parts:
            body.append(f"<div class='error' id='message'>partition {esc(s['dataset'])}|{esc(s['model'])} is not materialised "
                        f"(no dataset_manifest under {esc(self.ex.root)}): materialise it with <code>cliplab run --model "
                        f"{esc(s['model'])} --dataset {esc(s['dataset'])}</code> (or the <code>main</code> job in "
                        "<code>cliplab ui</code>). Materialised: "
                        + (", ".join(f"{esc(d)}|{esc(m)}" for m, d in parts) or "none") + "</div>")
        else:
            try:
                browser = self._browser(s)
            except CliplabError as e:
                browser = f"<fieldset><legend>image</legend><div class='error'>{esc(e)}</div></fieldset>"
            body.append("<div class='cols'>" + browser + self._uploader(s) + "</div>")
            image = s.get("image", "")
            if s["panel"] != "heads" and s["panel"] != "text-nn" and not image:
                body.append("<div class='note'>pick an image above to see the panel</div>")
            else:
                shown = self.ex.upload_name(image) or image
                if image:
                    body.append(f"<div class='note' id='current'>image: <b>{esc(shown)}</b></div>")
                cols = []
                for model in [s["model"]] + ([s["model2"]] if s.get("model2") else []):
                    cols.append(self._panel_html(model, self._compute(model, s), s))
                body.append("<div class='cols' id='panels'>" + "".join(cols) + "</div>")
        doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>cliplab explorer</title><style>{CSS}</style>"
               f"</head><body><header><h1>cliplab explorer · {esc(self.ex.root)}</h1></header><div id='busy'>computing…</div>"
               f"<main>{''.join(body)}</main><script>{JS}</script></body></html>")
        return HTMLResponse(doc, status_code=status)

    def _compute(self, model: str, s: dict) -> Panel:
        name, dataset, image = s["panel"], s["dataset"], s.get("image", "")
        try:
            params = {}
            if name in ("segment", "image-nn", "text-nn"):
                params |= {"layer": _int(s, "layer", -1), "head": _int(s, "head", 0)}
            if name in ("property", "image-nn", "text-nn"):
                params["k"] = _int(s, "k", 4 if name == "property" else 8)
                if params["k"] < 1:
                    raise CliplabError(f"k must be ≥ 1; got {params['k']}")
            if name == "segment":
                params["texts"] = s.get("texts", "")
            if name == "contrast":
                params |= {"text_a": s.get("text_a") or "something yellow", "text_b": s.get("text_b") or "something white",
                           "heads": s.get("heads", "")}
            if name == "text-nn":
                params["text"] = s.get("text", "")
            if name == "property":
                params["prop"] = s.get("prop", "")
        except CliplabError as e:
            return Panel(PANELS[name], error=str(e))
        return self.ex.panel(name, model, dataset, image, **params)

    # ---- routes --------------------------------------------------------------------------------------------------
    def panel_json(self, s: dict) -> dict:
        """The panel of the page's state as data: what the page draws, numbers at full precision."""
        import hashlib

        s["panel"] = s.get("panel") if s.get("panel") in PANELS else "concepts"
        out = {}
        for model in [s.get("model", "")] + ([s["model2"]] if s.get("model2") else []):
            p = self._compute(model, {**s, "model": model})
            out[model] = {"title": p.title, "error": p.error, "notes": p.notes, "seconds": p.seconds,
                          "sources": [{"asset": a, "partition": part, "written": w} for a, part, w in p.sources],
                          "pictures": [{"caption": c, "sha256": hashlib.sha256(png).hexdigest(), "bytes": len(png)}
                                       for c, png in p.pictures],
                          "tables": {c: f.to_dicts() for c, f in p.tables}}
        return out

    async def api_panel(self, request: Request):
        from starlette.responses import JSONResponse

        s = {k: v for k, v in request.query_params.items() if k in STATE}
        if not s.get("model") or not s.get("dataset"):
            return JSONResponse({"error": "model and dataset are required"}, status_code=400)
        return JSONResponse(await _threaded(self.panel_json, s))

    async def index(self, request: Request):
        s = {k: v for k, v in request.query_params.items() if k in STATE}
        return await _threaded(self.page, s)

    async def upload(self, request: Request):
        from email.parser import BytesParser
        from email.policy import HTTP

        ctype = request.headers.get("content-type", "")
        body, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD_BYTES + 1_000_000:
                return await _threaded(self.page, {}, f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", 413)
            body.append(chunk)
        s, data, name = {}, b"", ""
        if ctype.startswith("multipart/form-data"):
            msg = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + b"".join(body))
            for part in msg.iter_parts() if msg.is_multipart() else []:
                field = part.get_param("name", header="content-disposition")
                if field == "file":
                    data, name = part.get_payload(decode=True) or b"", part.get_filename() or ""
                elif field in STATE:
                    s[field] = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        else:
            return await _threaded(self.page, s, "upload with a multipart form (the page's Upload button)", 400)
        try:
            ref = self.ex.add_upload(data, name)
        except CliplabError as e:
            return await _threaded(self.page, s, f"upload refused: {e}", 400)
        return RedirectResponse(_url(s, image=ref, page=""), status_code=303)


async def _threaded(fn, *args):
    """fn(*args) in a worker thread, one request's work at a time (the models and caches are shared)."""
    from starlette.concurrency import run_in_threadpool

    def locked():
        with fn.__self__.ex.lock:
            return fn(*args)

    return await run_in_threadpool(locked)


def create_app(explorer: Explorer | None = None) -> Starlette:
    app_state = ExplorerApp(explorer or Explorer())

    async def healthz(_):
        return PlainTextResponse("ok")

    async def failure(request: Request, exc: Exception):
        log.exception("explorer: %s %s failed", request.method, request.url.path, exc_info=exc)
        message = str(exc) if isinstance(exc, CliplabError) else f"{type(exc).__name__}: {exc}"
        return HTMLResponse(f"<!doctype html><html><body><h1>cliplab explorer</h1><div class='error' id='message'>"
                            f"{esc(message)}</div><p><a href='/'>back</a></p></body></html>", status_code=500)

    app = Starlette(routes=[Route("/", app_state.index), Route("/upload", app_state.upload, methods=["POST"]),
                            Route("/healthz", healthz),
                            Route("/api/panel", app_state.api_panel)],
                    exception_handlers={Exception: failure})
    app.state.explorer = app_state.ex
    return app
