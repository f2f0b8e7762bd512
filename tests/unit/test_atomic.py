"""Files and folders that appear whole or not at all (launcher/atomic.py)."""
import os

import pytest

from launcher import atomic


def test_write_text_creates_and_replaces(tmp_path):
    target = tmp_path / "state.json"
    atomic.write_text(target, "first")
    assert target.read_text() == "first"
    inode = target.stat().st_ino
    atomic.write_text(target, "second")
    assert target.read_text() == "second"
    assert target.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary left


def test_write_text_that_fails_leaves_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic.write_text(target, "old")

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"


def test_folder_appears_whole_when_the_block_succeeds(tmp_path):
    out = tmp_path / "cache" / "key"
    with atomic.folder(out, "done.json") as tmp:
        assert tmp.parent == out.parent and tmp != out and not out.exists()
        (tmp / "data.bin").write_text("x")
        (tmp / "done.json").write_text("{}")
    assert sorted(p.name for p in out.iterdir()) == ["data.bin", "done.json"]
    assert [p.name for p in out.parent.iterdir()] == ["key"]  # the temporary became the folder
    assert oct(out.stat().st_mode & 0o777) == oct(0o755)


def test_folder_leaves_nothing_when_the_block_raises(tmp_path):
    out = tmp_path / "cache" / "key"
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic.folder(out, "done.json") as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_folder_losing_a_race_keeps_the_winners_copy(tmp_path):
    out = tmp_path / "key"
    with atomic.folder(out, "done.json") as tmp:
        (tmp / "done.json").write_text("mine")
        # another process finished first
        out.mkdir()
        (out / "done.json").write_text("theirs")
    assert (out / "done.json").read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["key"]  # the loser's copy is thrown away


def test_folder_onto_an_incomplete_folder_fails(tmp_path):
    out = tmp_path / "key"
    with pytest.raises(OSError):
        with atomic.folder(out, "done.json") as tmp:
            (tmp / "done.json").write_text("mine")
            out.mkdir()
            (out / "partial").write_text("not ours, not complete")
    assert [p.name for p in tmp_path.iterdir()] == ["key"]
