"""LLM head labeler against a real local HTTP server that speaks OpenAI's /v1/chat/completions protocol."""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from cliplab.errors import CliplabError
from cliplab.heads.labels import IN_CONTEXT_EXAMPLES
from resources.labelers import HeadLabelers, LLMLabeler

COLOURS = ("red", "blue", "green", "yellow", "purple")


class ChatHandler(BaseHTTPRequestHandler):
    """A tiny rule-based "LLM": labels texts "Colors" when they name a colour, else "Objects".

    Answers like an OpenAI server; records every request body. Paths: /v1 (good), /garbage/v1 (200 with a
    non-chat body), /broken/v1 (500), /chatter/v1 (a chat completion whose content is not JSON).
    """

    requests: ClassVar[list] = []

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        path = self.path.split("?")[0]
        type(self).requests.append({"path": path, "auth": self.headers.get("Authorization"), "body": body})
        if path == "/broken/v1/chat/completions":
            return self._send(500, b'{"error": "model crashed"}')
        if path == "/garbage/v1/chat/completions":
            return self._send(200, b"<html>hello</html>")
        if not path.endswith("/v1/chat/completions"):
            return self._send(404, b"not found")
        texts = [line.split(". ", 1)[1] for line in body["messages"][-1]["content"].splitlines()[1:]]
        hits = [any(c in t.lower() for c in COLOURS) for t in texts]
        label = "Colors" if sum(hits) >= len(texts) / 2 else "Objects"
        content = "I am not sure." if path.startswith("/chatter") else json.dumps(
            {"label": label, "matches": hits if label == "Colors" else [not h for h in hits]})
        reply = {"id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                 "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}
        self._send(200, json.dumps(reply).encode())

    def _send(self, status, payload):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_llm_labeler_speaks_the_protocol(server, monkeypatch):
    ChatHandler.requests.clear()
    monkeypatch.setenv("CLIPLAB_LLM_URL", f"{server}/v1")
    monkeypatch.setenv("CLIPLAB_LLM_MODEL", "tiny-llm")
    monkeypatch.setenv("CLIPLAB_LLM_API_KEY", "secret")
    labeler = HeadLabelers().llm()
    heads = [["a red car", "blue sky", "green grass", "a wooden chair", "yellow paint"],
             ["a chair", "a table", "a purple lamp", "a cup", "a spoon"]]
    labels = labeler.label(heads)
    assert [h.label for h in labels] == ["Colors", "Objects"]
    assert labels[0].matches == (True, True, True, False, True)
    assert labels[1].matches == (True, True, False, True, True)
    assert len(ChatHandler.requests) == 2
    sent = ChatHandler.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == "Bearer secret"
    assert sent["body"]["model"] == "tiny-llm" and sent["body"]["temperature"] == 0
    messages = sent["body"]["messages"]
    assert len(messages) == 2 + 2 * len(IN_CONTEXT_EXAMPLES)  # system, examples, the head
    assert json.loads(messages[2]["content"])["label"] == IN_CONTEXT_EXAMPLES[0]["label"]
    assert messages[-1]["content"].splitlines()[1:] == [f"{i + 1}. {t}" for i, t in enumerate(heads[0])]
    # the full address works too
    assert LLMLabeler(f"{server}/v1/chat/completions", "m").label([heads[0]])[0].label == "Colors"


@pytest.mark.parametrize("path, message", [("/broken/v1", "HTTP 500"), ("/garbage/v1", "did not answer a chat completion"),
                                           ("/chatter/v1", "not the JSON object"), ("/nowhere", "HTTP 404")])
def test_llm_labeler_bad_answers_are_clear_errors(server, path, message):
    with pytest.raises(CliplabError, match=message):
        LLMLabeler(f"{server}{path}", "m").label([["a red car"]])


def test_llm_labeler_unreachable_endpoint(monkeypatch):
    import http.client

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    real = http.client.HTTPConnection.connect
    monkeypatch.setattr(http.client.HTTPConnection, "connect", lambda self: calls.append(self.port) or real(self))
    with pytest.raises(CliplabError, match=f"127.0.0.1:{port}/v1/chat/completions is unreachable"):
        LLMLabeler(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5).label([["a red car"]])
    assert calls == [port]  # one attempt, an error at once: no retry loop before saying so
    with pytest.raises(CliplabError, match="needs an endpoint URL"):
        LLMLabeler("", "m")
    with pytest.raises(CliplabError, match="must be an http"):
        LLMLabeler("ftp://host/v1", "m")
    with pytest.raises(CliplabError, match="llm_timeout_s must be > 0"):
        LLMLabeler("http://host/v1", "m", timeout_s=0)


@pytest.fixture
def trickler():
    """A server that sends a status line and then one byte every 0.2 s for a minute: every socket read succeeds."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    stop = threading.Event()

    def serve():
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(300):
                if stop.is_set():
                    return
                try:
                    conn.sendall(b" ")
                except OSError:
                    return
                time.sleep(0.2)

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    listener.close()


def test_llm_labeler_has_a_total_deadline_not_a_per_read_one(trickler):
    # before: read on for the trickle's whole minute, then raised http.client.IncompleteRead, no deadline
    with pytest.raises(CliplabError, match=r"did not answer within 1\.5 s \(llm_timeout_s\)"):
        LLMLabeler(trickler, "m", timeout_s=1.5).label([["a red car"]])


def test_an_api_key_in_the_endpoint_url_never_reaches_a_message(server):
    ChatHandler.requests.clear()
    host = server.removeprefix("http://")
    url = f"http://apiuser:sk-SECRET-1@{host}/broken/v1?api_key=QSECRET2&region=eu"
    with pytest.raises(CliplabError) as err:
        LLMLabeler(url, "m").label([["a red car"]])
    text = str(err.value)
    assert "HTTP 500" in text and "sk-SECRET-1" not in text and "QSECRET2" not in text and "region=eu" in text
    assert ChatHandler.requests[-1]["auth"].startswith("Basic ")  # the URL's credentials are still sent
    with pytest.raises(CliplabError) as err:
        LLMLabeler(f"http://sk-SECRET-3@{host}/broken/v1", "m", api_key="sk-SECRET-3").label([["a red car"]])
    assert "sk-SECRET-3" not in str(err.value)


def test_the_cli_names_cliplabs_error_not_the_library_error_under_it():
    from dagster._utils.error import SerializableErrorInfo

    from pipelines.cli import root_cause

    inner = SerializableErrorInfo("[Errno 111] Connection refused", [], "ConnectionRefusedError")
    ours = SerializableErrorInfo("LLM endpoint http://h/v1/chat/completions is unreachable: refused", [],
                                 "CliplabError", cause=inner)
    step = SerializableErrorInfo("Error occurred while materializing head_labels", [], "DagsterExecutionStepExecutionError",
                                 cause=ours)
    assert root_cause(step) == ours.message
    assert root_cause(SerializableErrorInfo("x", [], "DagsterError", cause=inner)) == inner.message
