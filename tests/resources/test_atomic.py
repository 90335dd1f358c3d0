"""Folder replacement: all or nothing, and a swap that died between its two renames is undone."""

import pytest

from resources.atomic import recover, replaced_folder


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "ckpt"
    with replaced_folder(target) as staged:
        (staged / "w").write_text("one")
    assert (target / "w").read_text() == "one"
    with pytest.raises(RuntimeError):
        with replaced_folder(target) as staged:
            (staged / "w").write_text("two, half written")
            raise RuntimeError("died")
    assert (target / "w").read_text() == "one"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging left behind
    with replaced_folder(target) as staged:
        (staged / "w").write_text("three")
    assert (target / "w").read_text() == "three" and [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_a_swap_that_died_between_its_renames_is_undone(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "w").write_text("old")
    target.rename(tmp_path / ".ckpt.old-1234abcd")  # the first rename happened, the second never did
    recover(target)
    assert (target / "w").read_text() == "old"
    recover(target)  # nothing to do
    assert (target / "w").read_text() == "old"
