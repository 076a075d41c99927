"""The one atomic writer and JSONL reader: nothing half-written, nothing of the user's removed."""

from __future__ import annotations

import json
import os

import pytest

from safesignal.io import (DataError, NotOursError, atomic_write_text, read_jsonl, recover_interrupted_replace,
                           replace_directory, write_jsonl)

MARKER = "ours.json"


def is_ours(path):
    return (path / MARKER).is_file()


def fill_with(text):
    def fill(directory):
        (directory / MARKER).write_text("{}")
        (directory / "payload.txt").write_text(text)
    return fill


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "good")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write_text(target, "bad")
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_replace_directory_refuses_a_users_directory_and_removes_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    with pytest.raises(NotOursError, match=str(target)):
        replace_directory(target, fill_with("x"), is_ours=is_ours, what="checkpoint")
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_directory_replaces_only_its_own_previous_copy(tmp_path):
    target = tmp_path / "out"
    replace_directory(target, fill_with("one"), is_ours=is_ours, what="checkpoint")
    replace_directory(target, fill_with("two"), is_ours=is_ours, what="checkpoint")
    assert (target / "payload.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_fill_keeps_the_previous_copy(tmp_path):
    target = tmp_path / "out"
    replace_directory(target, fill_with("one"), is_ours=is_ours, what="checkpoint")

    def broken(directory):
        (directory / "payload.txt").write_text("half")
        raise RuntimeError("crash mid-save")

    with pytest.raises(RuntimeError):
        replace_directory(target, broken, is_ours=is_ours, what="checkpoint")
    assert (target / "payload.txt").read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    target = tmp_path / "out"
    replace_directory(target, fill_with("one"), is_ours=is_ours, what="checkpoint")
    real_replace, calls = os.replace, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        replace_directory(target, fill_with("two"), is_ours=is_ours, what="checkpoint")
    monkeypatch.setattr(os, "replace", real_replace)
    assert not target.exists()
    with pytest.warns(UserWarning, match="interrupted save"):
        recover_interrupted_replace(target, is_ours)
    assert (target / "payload.txt").read_text() == "one"


def test_read_jsonl_reports_every_bad_line_with_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n\nnot json\n[1, 2]\n{"a": "x"}\n')

    def parse(obj, where):
        if not isinstance(obj["a"], int):
            raise DataError([f"{where}: a: expected an integer"])
        return obj["a"]

    with pytest.raises(DataError) as info:
        read_jsonl(path, parse)
    assert [p.split(": ")[0] for p in info.value.problems] == [f"{path}:3", f"{path}:4", f"{path}:5"]


def test_write_then_read_jsonl_round_trips(tmp_path):
    records = [{"prompt": "é", "n": 1}, {"prompt": "b\nc", "n": 2}]
    write_jsonl(tmp_path / "r.jsonl", records)
    assert [obj for _, obj in read_jsonl(tmp_path / "r.jsonl")] == records
    assert json.loads((tmp_path / "r.jsonl").read_text().splitlines()[1]) == records[1]


def test_replacing_an_empty_directory_leaves_nothing_beside_it(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    replace_directory(target, fill_with("one"), is_ours=is_ours, what="checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (target / "payload.txt").read_text() == "one"


def test_an_atomic_write_gets_the_mode_of_an_ordinary_new_file(tmp_path):
    import os
    import stat

    ordinary = tmp_path / "ordinary.txt"
    ordinary.write_text("x")  # the mode open() gives a new file under this umask
    atomic_write_text(tmp_path / "atomic.txt", "x")
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(tmp_path / "atomic.txt") == mode(ordinary)
