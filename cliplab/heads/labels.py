"""Property labels of attention heads from their top TextSpan texts (CLIP-InterpreT, Madasu et al., Sec. 3).

The paper asks ChatGPT, with a few hand-labelled heads as in-context examples, for the property shared by
a head's top-5 TextSpan texts. cliplab's offline default is an embedding labeler; an LLM labeler behind
the same interface is optional (the HTTP client lives in ``resources.labelers``; the prompt and the
parsing of its reply are here).

Embedding labeler: every property p of a vocabulary is a few exemplar phrases; a sentence model embeds
texts and exemplars (unit vectors). sim(t, p) = max over p's exemplars of the cosine with t.

    label(h) = argmax_p mean_{t ∈ top-5(h)} sim(t, p);   t matches label(h) ⟺ sim(t, label(h)) ≥ τ

τ (``threshold``) is a parameter. The match flags feed the association score (``cliplab.heads.scores``).
"""

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from cliplab.errors import CliplabError

# Property vocabulary: name → exemplar phrases. The method page's properties (colours, shapes, locations,
# animals, textures, patterns, numbers/counting, letters/text, emotions, style/art, photography, objects,
# nature/environment, people, ...) and toyworld's attribute families (colour, shape/part, position, count,
# texture, background), which map onto "colours", "shapes", "position", "numbers", "textures"/"patterns"
# and "background" (see TOYWORLD_FAMILY_LABELS).
PROPERTY_VOCABULARY: dict[str, tuple[str, ...]] = {
    "colours": ("a colour", "colourful", "red", "blue", "green", "yellow", "something purple", "an orange object",
                "black and white", "a bright colour"),
    "shapes": ("a shape", "a geometric shape", "round", "a circle", "a triangle", "a square", "a rectangle",
               "a curved outline", "a pointed shape", "an oval"),
    "position": ("the position in the image", "on the left", "on the right", "at the top", "at the bottom",
                 "in the centre", "in the middle of the picture", "off to one side", "placed in a corner"),
    "numbers": ("a number", "counting", "two of them", "three things", "four objects", "many items",
                "a single one", "a pair", "several", "a group of five"),
    "textures": ("a texture", "rough surface", "smooth surface", "fur", "woven fabric", "grainy", "a soft texture",
                 "a bumpy surface"),
    "patterns": ("a pattern", "stripes", "polka dots", "checkered", "a repeating pattern", "spots",
                 "a zigzag pattern", "a floral pattern"),
    "background": ("the background", "a backdrop", "the scene behind the object", "the setting", "a plain backdrop",
                   "the ground and the sky", "a wall behind it"),
    "locations": ("a location", "a country", "a city", "a famous place", "a landmark", "geography", "a street in Paris",
                  "an Asian market", "a village in Africa"),
    "nature": ("nature", "the environment", "a landscape", "a forest", "a mountain", "the sea", "the weather",
               "a field of grass", "snow and ice", "the sky"),
    "animals": ("an animal", "a dog", "a cat", "a bird", "a horse", "wildlife", "an insect", "a fish"),
    "people": ("a person", "a man", "a woman", "a child", "a group of people", "a face", "a family"),
    "emotions": ("an emotion", "happy", "sad", "angry", "surprised", "a smiling face", "feeling scared"),
    "letters": ("letters", "text", "a word", "writing", "the letter A", "a sign with text", "typography"),
    "art": ("art", "a painting", "an illustration", "a drawing", "a sculpture", "an artistic style", "a cartoon"),
    "photography": ("a photograph", "a close-up photo", "a blurry photo", "a wide-angle shot", "a black and white photo",
                    "a low-light photo", "a photo taken from above"),
    "objects": ("an object", "a tool", "a household item", "a chair", "a cup", "a device", "a thing"),
    "vehicles": ("a vehicle", "a car", "a boat", "a bicycle", "a train", "an aeroplane", "transport"),
    "food": ("food", "a meal", "fruit", "a dessert", "vegetables", "a drink"),
    "clothing": ("clothing", "a dress", "a hat", "shoes", "a jacket", "fashion"),
    "materials": ("a material", "wood", "metal", "glass", "plastic", "stone", "paper"),
    "time": ("a time of day", "night", "morning", "a season", "winter", "summer", "autumn"),
    "activities": ("an activity", "playing a sport", "running", "cooking", "dancing", "working"),
}

# toyworld attribute family → the vocabulary labels that name it (ground truth for the toyworld tests).
TOYWORLD_FAMILY_LABELS: dict[str, tuple[str, ...]] = {
    "colour": ("colours",), "shape": ("shapes",), "position": ("position",), "count": ("numbers",),
    "texture": ("textures", "patterns"), "background": ("background", "nature"),
}


@dataclass(frozen=True)
class HeadLabel:
    """One head's label.

    label: the property (a vocabulary name for the embedding labeler; free text from an LLM).
    matches: per text, whether it matches the label.
    similarities: per text, sim(t, label) (embedding labeler) or None (LLM labeler).
    """

    label: str
    matches: tuple[bool, ...]
    similarities: tuple[float, ...] | None = None


class HeadLabeler(Protocol):
    """Labels heads from their texts: ``label([[t_1..t_5], ...]) -> [HeadLabel, ...]`` (one per head)."""

    name: str

    def label(self, heads: Sequence[Sequence[str]]) -> list[HeadLabel]: ...


class EmbeddingLabeler:
    """The offline labeler (module docstring). ``encode``: list of n strings → (n, e) unit embeddings."""

    name = "embedding"

    def __init__(self, encode: Callable[[list[str]], np.ndarray], threshold: float = 0.5,
                 vocabulary: Mapping[str, Sequence[str]] = PROPERTY_VOCABULARY):
        if not vocabulary or any(not exemplars for exemplars in vocabulary.values()):
            raise CliplabError("the property vocabulary must name at least one property, each with exemplar phrases")
        self.encode, self.threshold = encode, float(threshold)
        self.properties = list(vocabulary)
        phrases = [p for exemplars in vocabulary.values() for p in exemplars]
        self._owner = np.repeat(np.arange(len(self.properties)), [len(e) for e in vocabulary.values()])
        self._exemplars = self._unit(phrases)  # (P_total, e)

    def _unit(self, texts: list[str]) -> np.ndarray:
        emb = np.asarray(self.encode(list(texts)), dtype=np.float64)
        return emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """(n, P) sim(t, p): per text, the max cosine with each property's exemplars."""
        cos = self._unit(list(texts)) @ self._exemplars.T  # (n, P_total)
        out = np.full((len(texts), len(self.properties)), -np.inf)
        for p in range(len(self.properties)):
            out[:, p] = cos[:, self._owner == p].max(1)
        return out

    def label(self, heads: Sequence[Sequence[str]]) -> list[HeadLabel]:
        flat = [t for texts in heads for t in texts]
        if not heads or any(not texts for texts in heads):
            raise CliplabError("every head needs at least one text to be labelled")
        sims = self.similarities(flat)
        labels, start = [], 0
        for texts in heads:
            block = sims[start:start + len(texts)]
            start += len(texts)
            best = int(block.mean(0).argmax())
            col = block[:, best]
            labels.append(HeadLabel(self.properties[best], tuple(bool(s >= self.threshold) for s in col),
                                    tuple(float(s) for s in col)))
        return labels


# In-context examples for the LLM labeler (the paper's "few hand-labelled heads"), written for cliplab:
# texts as a TextSpan head might output them, and the property a person would name.
IN_CONTEXT_EXAMPLES: tuple[dict, ...] = (
    {"texts": ["A vibrant purple flower", "Bright orange sunset", "A yellow raincoat", "Deep blue water",
               "A red brick house"], "label": "Colors", "matches": [True, True, True, True, True]},
    {"texts": ["A street in Tokyo", "Aerial view of Paris", "A market in Marrakesh", "Snowy mountain lodge",
               "A close-up of a beetle"], "label": "Locations", "matches": [True, True, True, False, False]},
    {"texts": ["Two puppies playing", "Three candles on a cake", "A pair of shoes", "Five apples in a row",
               "A lonely tree"], "label": "Counting", "matches": [True, True, True, True, True]},
    {"texts": ["Striped wallpaper", "A checkered floor", "Polka dot dress", "A smiling child",
               "Zigzag embroidery"], "label": "Patterns", "matches": [True, True, True, False, True]},
)

SYSTEM_PROMPT = (
    "You label attention heads of a vision model. Each head is described by a few texts that best explain "
    "its outputs. Name the single common property of the texts in one or two words (for example: Colors, "
    "Locations, Animals, Patterns, Counting, Emotions, Photography), and say for each text whether it fits "
    "that property. Answer with JSON only: {\"label\": \"...\", \"matches\": [true, false, ...]}, one "
    "boolean per text, in order."
)


def _user_turn(texts: Sequence[str]) -> str:
    return "Texts:\n" + "\n".join(f"{i + 1}. {t}" for i, t in enumerate(texts))


def chat_messages(texts: Sequence[str], examples: Sequence[Mapping] = IN_CONTEXT_EXAMPLES) -> list[dict]:
    """OpenAI chat messages: system prompt, each example as a user/assistant pair, then the head's texts."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for ex in examples:
        messages.append({"role": "user", "content": _user_turn(ex["texts"])})
        messages.append({"role": "assistant", "content": json.dumps({"label": ex["label"], "matches": ex["matches"]})})
    messages.append({"role": "user", "content": _user_turn(texts)})
    return messages


def parse_reply(content: str, n_texts: int) -> HeadLabel:
    """The assistant's JSON answer → HeadLabel; anything else is a CliplabError quoting the reply."""
    match = re.search(r"\{.*\}", content or "", flags=re.DOTALL)  # tolerate ```json fences and chatter
    try:
        answer = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise CliplabError(f"the LLM labeler's reply is not the JSON object asked for: {content[:200]!r}")
    label, matches = answer.get("label"), answer.get("matches")
    if not isinstance(label, str) or not label.strip():
        raise CliplabError(f"the LLM labeler's reply has no label: {content[:200]!r}")
    if not isinstance(matches, list) or len(matches) != n_texts or not all(isinstance(m, bool) for m in matches):
        raise CliplabError(f"the LLM labeler's reply needs {n_texts} true/false matches: {content[:200]!r}")
    return HeadLabel(label.strip(), tuple(matches), None)
