"""mailsources: .eml files, mbox files, Maildir folders and directories, read lazily;
broken inputs become problems, never exceptions."""

from __future__ import annotations

from pathlib import Path

from gateway.cli._sources import SourceMessage, SourceProblem, iter_messages, looks_like_message


def msg(n: int, body: str = "hello") -> bytes:
    return f"From: a{n}@example.com\nSubject: s{n}\nMessage-ID: <{n}@x>\n\n{body}\n".encode()


def test_an_eml_file_is_one_message_named_by_its_path(tmp_path: Path) -> None:
    """A single .eml file gives one message whose source is the path."""
    path = tmp_path / "one.eml"
    path.write_bytes(msg(1))
    (only,) = list(iter_messages([path]))
    assert only == SourceMessage(str(path), msg(1))


def test_an_mbox_is_split_on_from_lines_and_unescaped(tmp_path: Path) -> None:
    """mbox: one message per 'From ' separator, sources path#0.., '>From ' unescaped."""
    body = ">From the start, this line was escaped"
    data = (
        b"From a1@example.com Thu Jan  1 00:00:00 2024\n"
        + msg(1, body)
        + b"\nFrom a2@example.com Thu Jan  1 00:00:01 2024\n"
        + msg(2)
    )
    path = tmp_path / "box"  # no extension: detected by its first line
    path.write_bytes(data)
    items = list(iter_messages([path]))
    assert [i.source for i in items] == [f"{path}#0", f"{path}#1"]
    first, second = items
    assert isinstance(first, SourceMessage) and isinstance(second, SourceMessage)
    assert first.raw == msg(1, "From the start, this line was escaped")
    assert second.raw == msg(2)


def test_a_maildir_yields_new_then_cur_keyed_without_flags(tmp_path: Path) -> None:
    """Maildir: new/ and cur/ entries, source maildir#key (the ':2,S' info dropped)."""
    box = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "new" / "1700000000.a.host").write_bytes(msg(1))
    (box / "cur" / "1700000001.b.host:2,S").write_bytes(msg(2))
    (box / "tmp" / "half-written").write_bytes(b"junk")
    items = list(iter_messages([box]))
    assert [i.source for i in items] == [f"{box}#1700000000.a.host", f"{box}#1700000001.b.host"]


def test_directories_are_walked_recursively_for_eml_and_mbox(tmp_path: Path) -> None:
    """A directory: *.eml and *.mbox files at any depth, sorted; other files are not read,
    and a note (not a failure) says how many."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "deep.eml").write_bytes(msg(1))
    (tmp_path / "top.eml").write_bytes(msg(2))
    (tmp_path / "notes.txt").write_text("not mail")
    (tmp_path / "a" / "list.mbox").write_bytes(b"From x\n" + msg(3))
    items = list(iter_messages([tmp_path]))
    assert [i.source for i in items] == [
        str(tmp_path / "a" / "b" / "deep.eml"),
        f"{tmp_path / 'a' / 'list.mbox'}#0",
        str(tmp_path / "top.eml"),
        str(tmp_path),
    ]
    note = items[-1]
    assert isinstance(note, SourceProblem) and not note.failure
    assert note.problem.startswith("1 file not read")


def test_broken_inputs_are_problems_and_the_walk_goes_on(tmp_path: Path) -> None:
    """Empty, binary and missing inputs are reported; the good file still comes through."""
    (tmp_path / "empty.eml").write_bytes(b"")
    (tmp_path / "garbage.eml").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "good.eml").write_bytes(msg(1))
    items = list(iter_messages([tmp_path, tmp_path / "missing.eml"]))
    problems = {Path(i.source).name: i.problem for i in items if isinstance(i, SourceProblem)}
    assert set(problems) == {"empty.eml", "garbage.eml", "missing.eml"}
    assert [Path(i.source).name for i in items if isinstance(i, SourceMessage)] == ["good.eml"]


def test_messages_are_read_lazily(tmp_path: Path) -> None:
    """The iterator reads a file only when it gets there: a file deleted later is reported."""
    (tmp_path / "1.eml").write_bytes(msg(1))
    (tmp_path / "2.eml").write_bytes(msg(2))
    walk = iter_messages([tmp_path])
    first = next(walk)
    (tmp_path / "2.eml").unlink()
    second = next(walk)
    assert isinstance(first, SourceMessage) and isinstance(second, SourceProblem)


def test_a_message_starts_with_a_header_field() -> None:
    """Header detection: 'Name: value' first, leading blank lines allowed."""
    assert looks_like_message(b"\r\nSubject: x\r\n\r\nbody")
    assert not looks_like_message(b"%PDF-1.4 binary")
    assert not looks_like_message(b"just some words: here")


def test_the_classify_progress_bar_knows_a_maildirs_size(tmp_path: Path) -> None:
    """Maildir entries and single message files are counted up front (the bar shows a
    total); an mbox or a plain directory would have to be read first (no total)."""
    from gateway.cli._classify import _known_count

    maildir = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for i in range(3):
        (maildir / "new" / f"m{i}").write_bytes(msg(i))
    (maildir / "cur" / "old:2,S").write_bytes(msg(9))
    (maildir / "tmp" / "partial").write_bytes(msg(8))
    single = tmp_path / "one.eml"
    single.write_bytes(msg(1))
    mbox = tmp_path / "box"
    mbox.write_bytes(b"From x\n" + msg(2))
    assert _known_count([str(maildir), str(single)]) == 5
    assert _known_count([str(maildir), str(mbox)]) is None
