"""YAML text -> plain data, plus where every value was written.

PyYAML's ``compose`` keeps the node tree with marks; building the data ourselves from it
lets us refuse duplicate keys (PyYAML silently keeps the last) and remember the line and
column of every key and value, so that a validation error can point at them.

Nesting is capped at ``MAX_DEPTH`` collections, checked on PyYAML's event stream (which
is iterative) before ``compose`` (which is recursive): a few hundred ``[`` would otherwise
end in a RecursionError instead of an error at a line and column.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["MAX_DEPTH", "Located", "YamlDoc", "YamlProblem", "parse_yaml"]

Path = tuple[str | int, ...]

MAX_DEPTH = 64
"""Most nested collections a rule file may have (real ones use about ten)."""


class YamlProblem(Exception):
    """Not YAML we accept; ``line`` and ``column`` are 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, column: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Located:
    """Where a value (and, in a mapping, its key) starts; 1-based."""

    line: int
    column: int
    key_line: int
    key_column: int


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass(slots=True)
class YamlDoc:
    """The data of one YAML document and the position of each path in it."""

    data: Any
    positions: dict[Path, Located] = field(default_factory=dict)
    # Structural problems found while building (duplicate keys...): the offending entry
    # is left out and building goes on, so that the loader can still name the rule.
    problems: list[tuple[Path, str, int, int]] = field(default_factory=list)

    def locate(self, loc: Iterable[str | int]) -> tuple[Path, Located, bool]:
        """Follow a pydantic error ``loc`` as far as the document goes.

        Returns the path followed, the position there, and whether ``loc`` ended on a
        mapping *key* (pydantic's ``[key]`` marker), in which case the key's position
        is the one to show. Components the document does not have (pydantic's union
        tags, a missing key) are skipped."""
        path: Path = ()
        on_key = False
        for part in loc:
            if part == "[key]":
                on_key = True
                continue
            candidate = (*path, part)
            if candidate in self.positions:
                path = candidate
        return path, self.positions[path], on_key


# libyaml's parser when present: PyYAML's pure-Python scanner takes seconds (quadratic)
# on a few thousand nested flow brackets before it emits the first event.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _check_depth(text: str) -> None:
    """Raise ``YamlProblem`` at the first collection nested deeper than ``MAX_DEPTH``.
    Any other problem is left to ``compose``, which reports it the same way as always."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_FAST_LOADER):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    mark = event.start_mark
                    line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
                    raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep", line, column)
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.MarkedYAMLError as exc:
        # libyaml 0.2.6 (PyYAML 6.0.4's wheels) refuses more than 1,000 nested flow
        # collections while scanning, before it emits a single event: that is deeper than
        # MAX_DEPTH too, and compose's recursion would not survive it.
        mark = exc.problem_mark
        if mark is not None and "nesting depth" in (exc.problem or ""):
            line, column = mark.line + 1, mark.column + 1
            raise YamlProblem(f"nested more than {MAX_DEPTH} levels deep", line, column) from None
        return
    except yaml.YAMLError:
        return


# The line breaks PyYAML counts in its marks (YAML 1.1 also breaks lines at NEL, LS, PS).
_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of ``text[index]``, counted as PyYAML counts them."""
    index = max(0, min(index, len(text)))
    line, start = 1, 0
    for match in _BREAK.finditer(text, 0, index):
        line, start = line + 1, match.end()
    return line, index - start + 1


def parse_yaml(text: str) -> YamlDoc:
    """Parse one YAML document with the safe loader; raise ``YamlProblem``."""
    try:
        _check_depth(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        message = " ".join(p for p in (exc.context, exc.problem) if p) or "not valid YAML"
        if mark is None:
            raise YamlProblem(message) from None
        raise YamlProblem(message, mark.line + 1, mark.column + 1) from None
    except yaml.reader.ReaderError as exc:
        # A character YAML does not allow (NUL, most C0/C1 controls): PyYAML gives an
        # offset into the text, not a mark.
        line, column = _position(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(str(exc.character)[:1])
        raise YamlProblem(f"character U+{char:04X} is not allowed in YAML", line, column) from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise YamlProblem(f"not valid YAML: {first}") from None
    doc = YamlDoc(data=None)
    if node is None:
        return doc
    line, column = _pos(node)
    doc.positions[()] = Located(line, column, line, column)
    doc.data = _Builder(doc).build(node, ())
    return doc


class _Builder:
    __slots__ = ("active", "constructor", "doc")

    def __init__(self, doc: YamlDoc) -> None:
        self.doc = doc
        self.constructor = yaml.SafeLoader("")
        self.active: set[int] = set()

    def build(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode | yaml.SequenceNode):
            if id(node) in self.active:
                line, column = _pos(node)
                self.doc.problems.append((path, "a recursive alias is not supported", line, column))
                return None
            self.active.add(id(node))
            try:
                return self._collection(node, path)
            finally:
                self.active.discard(id(node))
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            line, column = _pos(node)
            problem = " ".join(p for p in (exc.context, exc.problem) if p) or "not valid YAML"
            raise YamlProblem(f"bad value: {problem}", line, column) from None
        except yaml.YAMLError:
            line, column = _pos(node)
            raise YamlProblem("bad value", line, column) from None

    def _collection(self, node: yaml.Node, path: Path) -> Any:
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        else:
            out: list[Any] = []
            for index, item in enumerate(node.value):
                line, column = _pos(item)
                self.doc.positions[(*path, index)] = Located(line, column, line, column)
                out.append(self.build(item, (*path, index)))
            return out

    def _key(self, node: yaml.Node) -> tuple[Any, str | None]:
        try:
            return self.constructor.construct_object(node), None
        except yaml.YAMLError as exc:
            # A tag the safe loader refuses (`!!python/object:os.system x:`) or cannot
            # decode (`!!binary x:`), on a key.
            detail = str(getattr(exc, "problem", None) or "cannot be read")
            return None, f"bad key: {detail.splitlines()[0]}"

    def _mapping(self, node: yaml.MappingNode, path: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key_line, key_column = _pos(key_node)
            problem = None
            key: Any = None
            if key_node.tag == "tag:yaml.org,2002:merge":
                problem = "'<<' merge keys are not supported"
            elif not isinstance(key_node, yaml.ScalarNode):
                problem = "a key must be a plain string"
            else:
                key, problem = self._key(key_node)
                if problem is None and not isinstance(key, str):
                    problem = f"a key must be a string, got {key!r} (quote it)"
                elif problem is None and key in first:
                    problem = f"duplicate key {key!r} (first at line {first[key]})"
            if problem is not None:
                self.doc.problems.append((path, problem, key_line, key_column))
                continue
            first[key] = key_line
            line, column = _pos(value_node)
            self.doc.positions[(*path, key)] = Located(line, column, key_line, key_column)
            out[key] = self.build(value_node, (*path, key))
        return out
