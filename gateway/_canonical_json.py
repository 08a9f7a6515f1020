"""The canonical JSON of a document, the text ``gateway.documents.document_hash`` hashes.

Canonical means ``json.dumps(doc, sort_keys=True, ensure_ascii=False,
separators=(",", ":"))`` encoded as UTF-8 (lone surrogates kept, ``surrogatepass``). The
hash is a dedup key that gateway instances share through Redis, across upgrades: these
octets may never change.

pydantic-core encodes a document about four times faster than the json module, but it
has no ``sort_keys``, writes some floats otherwise (``0.00001`` for ``1e-05``), refuses
lone surrogates and writes some types json refuses. So the fast path copies the document
with its keys sorted, admits only what it encodes exactly as json does (dicts with str
keys, lists, str, int, bool, None, floats it writes as ``repr`` does), and everything
else takes the json module's path.
"""

from __future__ import annotations

import json
from typing import Any

import pydantic_core

__all__ = ["canonical_json", "canonical_json_slow"]

# json.dumps(sort_keys=True, ensure_ascii=False, separators=(",", ":")) builds this
# encoder anew for every call; encode() keeps no state between calls (thread-safe).
_CANONICAL_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# Encoded alike by both (a str's escapes are json's, lone surrogates aside).
_LEAVES = frozenset({str, int, bool, type(None)})


class _NotPlain(Exception):
    """A value the fast path cannot vouch for."""


def canonical_json_slow(value: Any) -> bytes:
    """The definition: the json module's sorted, compact UTF-8 text."""
    return _CANONICAL_JSON.encode(value).encode("utf-8", "surrogatepass")


def canonical_json(value: Any) -> bytes:
    """The same octets as ``canonical_json_slow(value)``."""
    try:
        return pydantic_core.to_json(_sorted(value))
    # ValueError: a lone surrogate; TypeError: keys of several types, which sorted()
    # refuses (json too, with its own message).
    except (_NotPlain, ValueError, TypeError, RecursionError):
        return canonical_json_slow(value)


def _sorted(value: Any) -> Any:
    """``value`` with every dict's keys in sorted order; _NotPlain where json's text may
    differ. Leaves are handled in their container's loop: a call per string would cost
    as much as the encoding."""
    kind = type(value)
    if kind is dict:
        copy = {}
        for key in sorted(value):
            if type(key) is not str:
                raise _NotPlain
            item = value[key]
            if type(item) in _LEAVES:
                copy[key] = item
            else:
                copy[key] = _sorted(item)
        return copy
    if kind is list or kind is tuple:
        return [item if type(item) in _LEAVES else _sorted(item) for item in value]
    if kind is float:
        # Where pydantic-core and repr() differ (exponents, NaN, inf): json's path.
        if pydantic_core.to_json(value) != repr(value).encode():
            raise _NotPlain
        return value
    if kind in _LEAVES:
        return value
    raise _NotPlain
