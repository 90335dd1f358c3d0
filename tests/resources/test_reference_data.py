"""Published reference files: the real files from ../shared/data, sha256 checks, and the offline error."""

import socket
from pathlib import Path

import pytest

from cliplab.errors import CliplabError
from cliplab.mutual.descriptors import descriptor_bank
from resources.reference_data import REFERENCE_FILES, ReferenceData

SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


@pytest.fixture
def ref(tmp_path):
    return ReferenceData(cache_dir=str(tmp_path / "cache"), local_dir=str(SHARED_DATA))


def test_imagenet_bank_has_the_papers_4229_descriptors(ref):
    bank = ref.descriptor_bank("imagenet")
    assert len(bank.class_names) == 1000 and len(bank.descriptors) == 4229
    assert sum(len(c) > 1 for c in bank.classes) == 500  # descriptors shared by several classes
    assert max(len(c) for c in bank.classes) == 53


def test_places365_and_food101_banks(ref):
    places = ref.descriptor_bank("places365")
    assert len(places.class_names) == 365 and len(places.descriptors) == 1806
    assert "airplane cabin" in places.class_names and not any("_" in n for n in places.class_names)
    assert len(ref.descriptor_bank("food101").descriptors) == 457


def test_text_banks(ref):
    assert len(ref.lines("image_descriptions_general")) == 3498
    assert len(ref.lines("google_3498_english")) == 3498
    assert len(ref.lines("concepts_20k")) == 20000


def test_bank_order_and_sharing_by_hand():
    bank = descriptor_bank({"a_b": ["x", "y"], "c": [], "d": ["y", "z", "y"]}, underscores_are_spaces=True)
    assert bank.descriptors == ("x", "y", "z")
    assert bank.classes == ((0,), (0, 2), (2,))
    assert bank.class_names == ("a b", "c", "d")


def test_a_file_with_the_wrong_hash_is_refused(tmp_path):
    rel = REFERENCE_FILES["concepts_20k"][0]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_text("cat\ndog\n")
    with pytest.raises(CliplabError, match="has sha256 .* expected 4ed6e533"):
        ReferenceData(local_dir=str(tmp_path), cache_dir=str(tmp_path / "c")).path("concepts_20k")


def test_download_without_network_says_where_to_put_the_file(tmp_path, monkeypatch):
    with socket.socket() as s:  # a loopback port nobody listens on: the real refusal path
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rel, _, sha = REFERENCE_FILES["google_3498_english"]
    monkeypatch.setitem(REFERENCE_FILES, "google_3498_english", (rel, f"http://127.0.0.1:{port}/words.txt", sha))
    ref = ReferenceData(cache_dir=str(tmp_path / "cache"), timeout_s=5)
    with pytest.raises(CliplabError, match=f"cannot download .* put the file at {tmp_path / 'cache' / rel}"):
        ref.path("google_3498_english")
    assert not list((tmp_path / "cache").rglob("*.txt*"))  # no partial file left


def test_unknown_reference_file(ref):
    with pytest.raises(CliplabError, match="unknown reference file 'imagenet'"):
        ref.path("imagenet")
