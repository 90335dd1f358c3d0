"""Association and entanglement scores of per-head property labels (CLIP-InterpreT, Madasu et al.).

Each analysed head (the last 4 layers) has a property label p_h and its top-5 TextSpan texts.

* Association score: fraction of heads with at least 3 of their 5 texts matching p_h.
* Entanglement score: "mean frequency at which heads share the same property label"; 0 means every
  head has its own label. The paper's formula is not published; ``shared/data/head-labels.md`` records
  two readings, both implemented here and selected by name (record which one a table used):

  - ``"shared_heads"`` (reading a): fraction of heads whose normalised label is carried by at least
    one other head.
  - ``"repeated_label_frequency"`` (reading b): for each label p carried by n_p ≥ 2 heads, its
    frequency n_p / H, averaged over those labels (0 when no label repeats). Averaging over *all*
    labels instead would give 1/(number of distinct labels), never 0, so it is not offered.
"""

from collections import Counter
from collections.abc import Sequence

from cliplab.errors import CliplabError

ENTANGLEMENT_READINGS = ("shared_heads", "repeated_label_frequency")
TRAILING_PUNCTUATION = ".,;:!? "


def normalise_label(label: str) -> str:
    """Case-, plural- and trailing-punctuation-insensitive form: "Locations." → "location".

    Plurals: only the last word is singularised, with English rules that fit property labels
    ("Activities" → "activity", "Glasses" → "glass", "Boxes" → "box"; "Class", "Bus", "Analysis" kept).
    """
    words = label.strip().lower().rstrip(TRAILING_PUNCTUATION).split()
    if not words:
        return ""
    words[-1] = _singular(words[-1])
    return " ".join(words)


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith(("sses", "xes", "ches", "shes", "zzes")):
        return word[:-2]
    if word.endswith(("ss", "us", "is")) or len(word) <= 3 or not word.endswith("s"):
        return word
    return word[:-1]


def association_score(
    labels: Sequence[str],
    matches: Sequence[Sequence[bool | str]],
    min_matches: int = 3,
) -> float:
    """Fraction of heads with at least ``min_matches`` (3 of 5) texts matching the head's label.

    labels: (H,) one label per analysed head.
    matches: (H, 5) per head, per TextSpan text, either a judgement (bool: the text matches the
        head's label, e.g. an embedding similarity above a threshold) or the text's own property
        label (str), which matches when it normalises to the head's normalised label.
    """
    if len(labels) != len(matches):
        raise CliplabError(f"{len(labels)} head labels but {len(matches)} rows of text matches")
    if not labels:
        raise CliplabError("association score of no heads is undefined")
    associated = 0
    for label, texts in zip(labels, matches):
        head = normalise_label(label)
        hits = sum(normalise_label(hit) == head if isinstance(hit, str) else bool(hit) for hit in texts)
        associated += hits >= min_matches
    return associated / len(labels)


def entanglement_score(labels: Sequence[str], reading: str = "shared_heads") -> float:
    """Entanglement of H analysed heads' labels (H,), by ``reading`` (see the module docstring)."""
    if not labels:
        raise CliplabError("entanglement score of no heads is undefined")
    counts = Counter(normalise_label(label) for label in labels)
    repeated = [n for n in counts.values() if n >= 2]
    if reading == "shared_heads":
        return sum(repeated) / len(labels)
    if reading == "repeated_label_frequency":
        return sum(n / len(labels) for n in repeated) / len(repeated) if repeated else 0.0
    raise CliplabError(f"unknown entanglement reading {reading!r}; choose one of {ENTANGLEMENT_READINGS}")
