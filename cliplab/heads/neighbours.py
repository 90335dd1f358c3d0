"""Nearest neighbours through attention heads (CLIP-InterpreT analyses 1, 4 and 5; Madasu et al.).

c_{l,h}(x) ∈ R^d is head h of layer l's token-summed direct contribution to the unit embedding of
image x (``Decomposition.heads``); t a unit text embedding.

1. Property-based neighbours: for the heads P labelled with a property, m(x) = mean_{(l,h) ∈ P}
   c_{l,h}(x); score(x, y) = cos(m(x), m(y)) for every reference image y; top-4.
4. Per-head neighbours of an image: score(x, y) = c_{l,h}(x) · c_{l,h}(y) (dot product); top-8.
5. Per-head neighbours of a text: score(t, y) = t · c_{l,h}(y); top-k.

4 and 5 are vector searches over stored contributions (LanceDB, metric "dot"); ``top_k_dot`` is the
exact brute-force version they are tested against. Every function returns a polars frame ordered by
rank (rank 1 = best); ``neighbour_grid`` draws one.
"""

import numpy as np
import polars as pl

from cliplab.errors import CliplabError


def ranked(ids: list[str], scores: np.ndarray, k: int, score_name: str = "score") -> pl.DataFrame:
    """The k best of ``ids`` by ``scores`` (n,) descending (ties: first id first) as rank, image_id, score."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(ids) != len(scores):
        raise CliplabError(f"{len(ids)} ids for {len(scores)} scores")
    if k < 1:
        raise CliplabError(f"k must be ≥ 1; got {k}")
    order = np.argsort(-scores, kind="stable")[:k]
    return pl.DataFrame({"rank": np.arange(1, len(order) + 1, dtype=np.int64),
                         "image_id": [ids[i] for i in order], score_name: scores[order]})


def top_k_dot(query: np.ndarray, vectors: np.ndarray, ids: list[str], k: int) -> pl.DataFrame:
    """Analyses 4 and 5 by brute force: query (d,) · vectors (n, d), the k largest."""
    query, vectors = np.asarray(query, np.float64), np.asarray(vectors, np.float64)
    if vectors.ndim != 2 or query.shape != (vectors.shape[1],):
        raise CliplabError(f"query must be (d,) and vectors (n, d); got {query.shape}, {vectors.shape}")
    return ranked(ids, vectors @ query, k, "dot")


def property_neighbours(query: np.ndarray, references: np.ndarray, ids: list[str], k: int = 4) -> pl.DataFrame:
    """Analysis 1. query: (P, d) the contributions c_{l,h}(x) of the P property heads for the query
    image; references: (n, P, d) the same heads for n reference images. cos of the head means, top-k."""
    query, references = np.asarray(query, np.float64), np.asarray(references, np.float64)
    if references.ndim != 3 or query.shape != references.shape[1:]:
        raise CliplabError(f"query must be (P, d) and references (n, P, d); got {query.shape}, {references.shape}")
    m_x = query.mean(0)
    m_y = references.mean(1)
    norms = np.linalg.norm(m_y, axis=1) * np.linalg.norm(m_x)
    cosine = (m_y @ m_x) / np.where(norms > 0, norms, 1.0)
    return ranked(ids, cosine, k, "cosine")


def parse_heads(spec: str) -> list[tuple[int, int]]:
    """"11.3,10.0" → [(11, 3), (10, 0)] (layer.head, 0-based)."""
    heads = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            layer, head = (int(p) for p in item.split("."))
        except ValueError:
            raise CliplabError(f"head {item!r} is not layer.head (e.g. 11.3)") from None
        heads.append((layer, head))
    if not heads:
        raise CliplabError(f"no heads in {spec!r}; give layer.head pairs such as 11.3,10.0")
    return heads


def neighbour_grid(query: np.ndarray | None, images: np.ndarray, frame: pl.DataFrame, score: str,
                   query_title: str = "query") -> bytes:
    """The query image (H, W, 3) uint8 (or None for a text query, named in ``query_title``) followed by
    the neighbours ``images`` (k, H', W', 3) in rank order, each captioned with rank, id and score."""
    from cliplab.plots import image_grid

    captions = [f"#{r} {i} {score}={s:.3g}" for r, i, s in zip(frame["rank"], frame["image_id"], frame[score])]
    if query is None:
        blank = np.full_like(images[0], 255)
        return image_grid(np.concatenate([blank[None], images]), [query_title, *captions], cols=min(5, len(images) + 1))
    tiles = [query, *images]
    size = max(t.shape[0] for t in tiles), max(t.shape[1] for t in tiles)
    tiles = np.stack([_pad(t, size) for t in tiles])
    return image_grid(tiles, [query_title, *captions], cols=min(5, len(tiles)))


def _pad(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    out = np.full((*size, 3), 255, np.uint8)
    out[: img.shape[0], : img.shape[1]] = img
    return out
