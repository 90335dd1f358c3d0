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
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.path == "/broken/v1/chat/completions":
            return self._send(500, b'{"error": "model crashed"}')
        if self.path == "/garbage/v1/chat/completions":
            return self._send(200, b"<html>hello</html>")
        if not self.path.endswith("/v1/chat/completions"):
            return self._send(404, b"not found")
        texts = [line.split(". ", 1)[1] for line in body["messages"][-1]["content"].splitlines()[1:]]
        hits = [any(c in t.lower() for c in COLOURS) for t in texts]
        label = "Colors" if sum(hits) >= len(texts) / 2 else "Objects"
        content = "I am not sure." if self.path.startswith("/chatter") else json.dumps(
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
    import urllib.request

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    calls = []
    real = urllib.request.urlopen
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: calls.append(a) or real(*a, **k))
    with pytest.raises(CliplabError, match=f"127.0.0.1:{port}/v1/chat/completions is unreachable"):
        LLMLabeler(f"http://127.0.0.1:{port}/v1", "m", timeout_s=5).label([["a red car"]])
    assert len(calls) == 1  # one attempt, an error at once: no retry loop before saying so
    with pytest.raises(CliplabError, match="needs an endpoint URL"):
        LLMLabeler("", "m")
