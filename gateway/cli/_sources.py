"""Messages from files, read lazily: ``.eml`` files, mbox files, Maildir folders, and
directories holding any of them (recursively).

    iter_messages(paths) -> Iterator[SourceMessage | SourceProblem]

A message is yielded with a ``source`` naming where it came from: the file path for an
``.eml``, ``path#index`` (0-based) for the n-th message of an mbox, ``maildir#key`` for a
Maildir entry (the key is the file name up to the ``:2,flags`` info). A file that cannot
be read, or is not a message, becomes a ``SourceProblem`` and the walk goes on.

Detection: a directory with ``cur/`` or ``new/`` is a Maildir; a file ending ``.mbox`` or
whose first line starts with ``From `` is an mbox; any other file named on the command
line is one message; inside directories only ``*.eml`` and ``*.mbox`` are taken.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SourceMessage", "SourceProblem", "is_maildir", "iter_messages", "looks_like_message"]

_HEADER_LINE = re.compile(rb"^[\x21-\x39\x3b-\x7e]+[ \t]*:")
_MBOX_SEPARATOR = re.compile(rb"^From \S*.*$")
_ESCAPED_FROM = re.compile(rb"^>(>*From )")


@dataclass(frozen=True, slots=True)
class SourceMessage:
    source: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class SourceProblem:
    """A file that could not be read as mail; ``failure`` False: only a note (files a
    directory held that are not read), not a failure of the run."""

    source: str
    problem: str
    failure: bool = True


def looks_like_message(raw: bytes) -> bool:
    """True when ``raw`` starts with a header field (``Name: value``)."""
    return bool(_HEADER_LINE.match(raw.lstrip(b"\r\n")[:1000]))


def is_maildir(path: Path) -> bool:
    return path.is_dir() and ((path / "cur").is_dir() or (path / "new").is_dir())


def _first_line(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.readline(200)


def _is_mbox(path: Path) -> bool:
    return path.suffix.lower() == ".mbox" or _first_line(path).startswith(b"From ")


def _one_message(path: Path, source: str) -> SourceMessage | SourceProblem:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return SourceProblem(source, f"cannot read: {exc.strerror or exc}")
    if not raw.strip():
        return SourceProblem(source, "empty file")
    if not looks_like_message(raw):
        return SourceProblem(source, "not an email message (no header fields)")
    return SourceMessage(source, raw)


def _mbox(path: Path) -> Iterator[SourceMessage | SourceProblem]:
    """The messages of an mbox (mboxrd unescaping: ``>From `` -> ``From ``)."""
    index = 0
    lines: list[bytes] = []
    started = False

    def emit() -> SourceMessage | SourceProblem:
        raw = b"".join(lines)
        if raw.endswith(b"\n\n"):  # the blank line before the next separator
            raw = raw[:-1]
        elif raw.endswith(b"\r\n\r\n"):
            raw = raw[:-2]
        source = f"{path}#{index}"
        if not looks_like_message(raw):
            return SourceProblem(source, "not an email message (no header fields)")
        return SourceMessage(source, raw)

    try:
        with path.open("rb") as fh:
            previous_blank = True
            for line in fh:
                if previous_blank and _MBOX_SEPARATOR.match(line):
                    if started:
                        yield emit()
                        index += 1
                    started = True
                    lines = []
                    previous_blank = False
                    continue
                if not started:
                    yield SourceProblem(str(path), "not an mbox (no 'From ' line first)")
                    return
                lines.append(_ESCAPED_FROM.sub(rb"\1", line))
                previous_blank = line in (b"\n", b"\r\n")
    except OSError as exc:
        yield SourceProblem(str(path), f"cannot read: {exc.strerror or exc}")
        return
    if started:
        yield emit()
    else:
        yield SourceProblem(str(path), "empty mbox")


def _maildir(path: Path) -> Iterator[SourceMessage | SourceProblem]:
    for sub in ("new", "cur"):
        folder = path / sub
        if not folder.is_dir():
            continue
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            yield SourceProblem(str(folder), f"cannot list: {exc.strerror or exc}")
            continue
        for name in names:
            if name.startswith("."):
                continue
            key = name.split(":", 1)[0]
            yield _one_message(folder / name, f"{path}#{key}")


def _directory(path: Path) -> Iterator[SourceMessage | SourceProblem]:
    if is_maildir(path):
        yield from _maildir(path)
        return
    try:
        entries = sorted(path.iterdir())
    except OSError as exc:
        yield SourceProblem(str(path), f"cannot list: {exc.strerror or exc}")
        return
    ignored = 0
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _directory(entry)
        elif entry.suffix.lower() == ".eml":
            yield _one_message(entry, str(entry))
        elif entry.suffix.lower() == ".mbox":
            yield from _mbox(entry)
        else:
            ignored += 1
    if ignored:
        yield SourceProblem(
            str(path),
            f"{ignored} file{'s' if ignored > 1 else ''} not read: in a directory only"
            " *.eml and *.mbox files are (name a file to read it as one message)",
            failure=False,
        )


def iter_messages(paths: Iterable[str | Path]) -> Iterator[SourceMessage | SourceProblem]:
    """Every message under ``paths``, in a stable order, one at a time."""
    for item in paths:
        path = Path(item)
        if path.is_dir():
            yield from _directory(path)
            continue
        if not path.exists():
            yield SourceProblem(str(path), "no such file or directory")
            continue
        try:
            mbox = _is_mbox(path)
        except OSError as exc:
            yield SourceProblem(str(path), f"cannot read: {exc.strerror or exc}")
            continue
        if mbox:
            yield from _mbox(path)
        else:
            yield _one_message(path, str(path))
