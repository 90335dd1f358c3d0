import numpy as np
import pytest

from cliplab.errors import CliplabError
from cliplab.heads.scores import association_score, entanglement_score, normalise_label

# Seven heads; normalised: color ×3, location ×2, animal, texture.
LABELS = ["Colors", "color.", "COLOR", "Location", "Locations.", "Animal", "Textures"]


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Colors", "color"),
        ("Location.", "location"),
        ("Night-scenes.", "night-scene"),
        ("Activities", "activity"),
        ("Glasses", "glass"),
        ("Boxes", "box"),
        ("Geographic locations", "geographic location"),
        ("Textures", "texture"),
        ("Class", "class"),
        ("Bus", "bus"),
        ("Analysis", "analysis"),
        ("  Word starting with the letter z ", "word starting with the letter z"),
    ],
)
def test_normalise_label(raw, normal):
    assert normalise_label(raw) == normal


def test_entanglement_shared_heads_reading():
    # 5 of 7 heads (3 colour + 2 location) share their label with another head.
    assert entanglement_score(LABELS, reading="shared_heads") == pytest.approx(5 / 7)


def test_entanglement_repeated_label_frequency_reading():
    # Repeated labels: color 3/7 and location 2/7; their mean is 5/14.
    assert entanglement_score(LABELS, reading="repeated_label_frequency") == pytest.approx(5 / 14)


@pytest.mark.parametrize("reading", ["shared_heads", "repeated_label_frequency"])
def test_entanglement_is_zero_when_every_head_has_its_own_label(reading):
    assert entanglement_score(["Color", "Location", "Animal", "Texture"], reading=reading) == 0.0


def test_association_counts_heads_with_at_least_three_matching_texts():
    labels = ["Colors", "Location", "Animal", "Texture"]
    matches = [
        [True, True, True, False, False],  # exactly 3: associated
        [True, True, False, False, False],  # 2: not
        ["animals", "Animal.", "ANIMAL", "color", "bird"],  # 3 text labels normalise to "animal"
        np.array([True, False, True, False, True]) & np.array([True, True, True, True, False]),  # 2
    ]
    assert association_score(labels, matches) == pytest.approx(2 / 4)


def test_bad_inputs_are_refused():
    with pytest.raises(CliplabError, match="reading"):
        entanglement_score(LABELS, reading="mean")
    with pytest.raises(CliplabError, match="2 head labels but 1"):
        association_score(["a", "b"], [[True] * 5])
