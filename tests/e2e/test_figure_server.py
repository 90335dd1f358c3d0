"""The figure server `cliplab ui` starts: PNGs under the artifact root's `_figures`, nothing else."""

import socket
import urllib.error
import urllib.request

import pytest

from assets._report import png_metadata
from pipelines.figure_server import start_figure_server

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_serves_each_materialisations_picture_by_its_digest_and_nothing_else(tmp_path, monkeypatch):
    url = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("CLIPLAB_FIGURE_URL", url)
    figures = tmp_path / "artifacts" / "_figures"
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "secret.png").write_bytes(PNG)
    first = png_metadata(PNG, figures / "mi_curves" / "m" / "d" / "mi.png", "MI")
    second = png_metadata(PNG + b"\x01", figures / "mi_curves" / "m" / "d" / "mi.png", "MI")
    server = start_figure_server(figures, url)
    try:
        links = [m["MI"].value.split("(")[1].rstrip(")") for m in (first, second)]
        assert links[0] != links[1] and all(link.startswith(url + "/_sha256/") for link in links)
        # the first materialisation's picture outlives the second's write to the same name
        assert _get(links[0]) == (200, PNG) and _get(links[1]) == (200, PNG + b"\x01")
        assert _get(f"{url}/mi_curves/m/d/mi.png") == (200, PNG + b"\x01")  # the latest under its own name
        assert _get(f"{url}/")[0] == 404  # no listings
        assert _get(f"{url}/../secret.png")[0] == 404  # nothing outside _figures
        assert _get(f"{url}/%2e%2e/secret.png")[0] == 404
        (figures / "notes.txt").write_text("x")
        assert _get(f"{url}/notes.txt")[0] == 404  # PNGs only
        with pytest.raises(OSError):  # the port is taken: cliplab ui warns and goes on without it
            start_figure_server(figures, url)
    finally:
        server.shutdown()
        server.server_close()
