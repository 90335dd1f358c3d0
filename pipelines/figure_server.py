"""Serves the PNGs that assets attach to their materialisations, so the UI shows them from a URL instead of the event
log carrying them as base64 (Dagster has no image metadata type; its UI renders Markdown images from any origin).

`cliplab ui` starts it beside the webserver, read-only, on the host and port of CLIPLAB_FIGURE_URL.
"""

from __future__ import annotations

import functools
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

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


def start_figure_server(figures: Path, url: str = FIGURE_URL_DEFAULT) -> ThreadingHTTPServer:
    """Serve `figures` (an artifact root's `_figures`) at `url`'s host and port from a daemon thread; returns the
    server (`.shutdown()` stops it). OSError when the port is taken."""
    parts = urlsplit(url)
    figures.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((parts.hostname or "127.0.0.1", parts.port or 80),
                                 functools.partial(_FigureHandler, directory=str(figures)))
    threading.Thread(target=server.serve_forever, name="cliplab-figures", daemon=True).start()
    return server
