"""Serves the PNGs that assets attach to their materialisations, so the UI shows them from a URL instead of the event
log carrying them as base64 (Dagster has no image metadata type; its UI renders Markdown images from any origin).

`cliplab ui` starts it beside the webserver, read-only, on the host and port of CLIPLAB_FIGURE_URL.
"""

from __future__ import annotations

import functools
import threading
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from assets._report import FIGURE_URL_DEFAULT


class _FigureHandler(SimpleHTTPRequestHandler):
    """GET/HEAD of PNG files under the figures folder; no listings, nothing else."""

    def send_head(self):
        path = Path(self.translate_path(self.path))
        if path.suffix != ".png" or not path.is_file():
            self.send_error(404, "no such figure")
            return None
        return super().send_head()

    def end_headers(self):
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")  # content-addressed names
        super().end_headers()

    def log_message(self, format, *args):  # quiet: the webserver's log is the one users read
        pass


class _StoreFigureHandler(BaseHTTPRequestHandler):
    """GET/HEAD of PNG objects under an object-store `_figures` prefix (an artifact root on S3), read on each request."""

    figures = ""  # the prefix's URI, set per server

    def _serve(self, body: bool):
        from resources.objectstore import read_bytes

        rel = unquote(urlsplit(self.path).path).lstrip("/")
        parts = rel.split("/")
        if not rel.endswith(".png") or any(p in ("", ".", "..") or p.startswith(".") for p in parts):
            self.send_error(404, "no such figure")
            return
        try:
            data = read_bytes(f"{self.figures.rstrip('/')}/{rel}")
        except OSError:
            data = None
        if data is None:
            self.send_error(404, "no such figure")
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_GET(self):
        self._serve(True)

    def do_HEAD(self):
        self._serve(False)

    def log_message(self, format, *args):
        pass


def start_figure_server(figures: Path | str, url: str = FIGURE_URL_DEFAULT) -> ThreadingHTTPServer:
    """Serve `figures` (an artifact root's `_figures`: a folder, or an object-store URI) at `url`'s host and port from
    a daemon thread; returns the server (`.shutdown()` stops it). OSError when the port is taken."""
    parts = urlsplit(url)
    address = (parts.hostname or "127.0.0.1", parts.port or 80)
    if isinstance(figures, str) and "://" in figures:
        handler = type("StoreFigureHandler", (_StoreFigureHandler,), {"figures": figures})
    else:
        figures = Path(figures)
        figures.mkdir(parents=True, exist_ok=True)
        handler = functools.partial(_FigureHandler, directory=str(figures))
    server = ThreadingHTTPServer(address, handler)
    threading.Thread(target=server.serve_forever, name="cliplab-figures", daemon=True).start()
    return server
