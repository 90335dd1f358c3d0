"""Embedding head labeler: the formula on a hand-made encoder, then the bundled sentence model on known texts."""

import numpy as np
import pytest

from cliplab.errors import CliplabError
from cliplab.heads.labels import (
    IN_CONTEXT_EXAMPLES,
    PROPERTY_VOCABULARY,
    TOYWORLD_FAMILY_LABELS,
    EmbeddingLabeler,
    chat_messages,
    parse_reply,
)

WORDS = ["red", "blue", "dog", "cat", "two", "left"]


def _bag_of_words(texts):
    """A transparent encoder: counts of WORDS (unit-normalised by the labeler)."""
    return np.array([[t.split().count(w) for w in WORDS] + [0.01] for t in texts], dtype=float)


def test_label_is_the_property_with_highest_mean_similarity_by_hand():
    vocab = {"colours": ("red", "blue"), "animals": ("dog", "cat")}
    labeler = EmbeddingLabeler(_bag_of_words, threshold=0.9, vocabulary=vocab)
    # texts: "red dog" has cos 1/√2 with "red" and with "dog"; "blue" 1 with colours; "cat cat" 1 with animals
    [head] = labeler.label([["red dog", "blue", "blue red", "cat cat", "two"]])
    sims = np.array(head.similarities)
    s = 1 / np.sqrt(2)
    colour = np.array([s, 1, s, 0, 0])
    animal = np.array([s, 0, 0, 1, 0])
    assert colour.mean() > animal.mean()
    assert head.label == "colours"
    np.testing.assert_allclose(sims, colour, atol=1e-3)
    assert head.matches == (False, True, False, False, False)  # only sim ≥ 0.9
    [head] = EmbeddingLabeler(_bag_of_words, threshold=0.7, vocabulary=vocab).label([["red dog", "blue", "blue red", "cat cat", "two"]])
    assert head.matches == (True, True, True, False, False)
    # animal texts → the other label
    [head] = labeler.label([["dog", "cat", "red cat"]])
    assert head.label == "animals"


def test_empty_inputs_are_refused():
    with pytest.raises(CliplabError, match="vocabulary"):
        EmbeddingLabeler(_bag_of_words, vocabulary={})
    with pytest.raises(CliplabError, match="at least one text"):
        EmbeddingLabeler(_bag_of_words, vocabulary={"a": ("red",)}).label([[]])


def test_vocabulary_covers_the_method_page_and_toyworld_families():
    from cliplab.toy import toyworld

    families = {f for _, f in toyworld.phrase_bank()}
    assert families == set(TOYWORLD_FAMILY_LABELS)
    assert all(label in PROPERTY_VOCABULARY for labels in TOYWORLD_FAMILY_LABELS.values() for label in labels)
    for needed in ("colours", "shapes", "locations", "animals", "textures", "patterns", "numbers", "letters",
                   "emotions", "art", "photography", "objects", "nature", "people"):
        assert needed in PROPERTY_VOCABULARY


@pytest.fixture(scope="module")
def sentence_labeler():
    from resources.labelers import sentence_encoder

    return EmbeddingLabeler(sentence_encoder(), threshold=0.5)


KNOWN = {
    "colours": ["something red", "a blue part", "the colour green", "a yellow object", "bright purple"],
    "numbers": ["three wheels", "two windows", "four petals", "a pair of shoes", "five apples"],
    "position": ["an object on the left", "something near the top", "placed to the right", "the bottom half",
                 "centred in the image"],
    "animals": ["a dog running", "a sleeping cat", "a bird on a branch", "a horse in a field", "a small fish"],
    "emotions": ["a happy face", "a sad man", "an angry child", "someone surprised", "a scared woman"],
    "locations": ["a street in Tokyo", "the Eiffel tower in Paris", "a village in Kenya", "a market in India",
                  "downtown New York"],
}


def test_bundled_sentence_model_labels_known_texts(sentence_labeler):
    labels = sentence_labeler.label(list(KNOWN.values()))
    got = {want: head.label for want, head in zip(KNOWN, labels)}
    assert got == {want: want for want in KNOWN}
    for head in labels:
        assert sum(head.matches) >= 3, head  # associated heads under τ = 0.5
        assert all(-1.0 <= s <= 1.0 for s in head.similarities)
    # a threshold no cosine reaches matches nothing
    strict = EmbeddingLabeler(sentence_labeler.encode, threshold=1.01).label([KNOWN["colours"]])[0]
    assert strict.label == "colours" and not any(strict.matches)


def test_toyworld_phrases_get_their_family_label(sentence_labeler):
    """Every toyworld family's phrases, five at a time, labelled with a label that names the family."""
    from cliplab.toy import toyworld

    by_family: dict[str, list[str]] = {}
    for phrase, family in toyworld.phrase_bank():
        by_family.setdefault(family, []).append(phrase)
    groups = [(f, phrases[i:i + 5]) for f, phrases in by_family.items() for i in range(0, len(phrases) - 4, 5)]
    labels = sentence_labeler.label([g for _, g in groups])
    agree = np.mean([head.label in TOYWORLD_FAMILY_LABELS[f] for (f, _), head in zip(groups, labels)])
    print(f"\ntoyworld phrase groups of 5 labelled with their family: {agree:.3f} of {len(groups)}")
    assert agree >= 0.9


def test_chat_messages_and_reply_parsing():
    messages = chat_messages(["a", "b"])
    assert messages[0]["role"] == "system"
    assert [m["role"] for m in messages[1:-1]] == ["user", "assistant"] * len(IN_CONTEXT_EXAMPLES)
    assert messages[-1] == {"role": "user", "content": "Texts:\n1. a\n2. b"}
    head = parse_reply('```json\n{"label": "Colors", "matches": [true, false]}\n```', 2)
    assert head.label == "Colors" and head.matches == (True, False) and head.similarities is None
    for bad in ("I think it is colours", '{"label": "", "matches": [true, true]}', '{"label": "x", "matches": [true]}',
                '{"label": "x", "matches": ["yes", "no"]}', "{not json}"):
        with pytest.raises(CliplabError, match="LLM labeler"):
            parse_reply(bad, 2)
