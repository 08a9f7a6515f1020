"""Envelope addresses in rule files: the addresses actions send to, and the patterns
``from`` / ``to`` conditions match.

Patterns (all case-insensitive, a YAML list means "any of them"):

- ``user@example.com``   exactly this address;
- ``@example.com``       any address at exactly this domain (NOT its subdomains);
- ``*@*.example.com``    a glob (``*``, ``?``, ``[...]``) over the whole address: here any
                         subdomain of example.com, but not example.com itself;
- ``<>``                 the null sender (bounces), for ``from``.
"""

from __future__ import annotations

import fnmatch
import re

__all__ = [
    "AddressMatcher",
    "check_address",
    "check_address_pattern",
    "compile_address_pattern",
    "normalize_address",
]

_LOCAL = r"[^\s@<>()\[\],;:\"\\]+"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_ADDRESS = re.compile(rf"^{_LOCAL}@{_DOMAIN}$")
_DOMAIN_RE = re.compile(rf"^{_DOMAIN}$")
_GLOB_CHARS = frozenset("*?[")
_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f<>,;]")


def check_address(value: str) -> str | None:
    """Why ``value`` is not a usable envelope address (``local@domain``), or None."""
    if _FORBIDDEN.search(value):
        return f"not an address (spaces, control characters, <>,; are not allowed): {value!r}"
    if len(value) > 254:
        return "address longer than 254 characters"
    if not _ADDRESS.match(value):
        return f"not an address of the form local@domain: {value!r}"
    return None


def check_address_pattern(value: str) -> str | None:
    """Why ``value`` is not a usable ``from``/``to`` pattern, or None."""
    if value == "<>":
        return None
    if not value:
        return "empty address pattern"
    if _FORBIDDEN.search(value):
        return (
            f"not an address pattern (spaces, control characters, <>,; are not allowed): {value!r}"
        )
    if _GLOB_CHARS & set(value):
        return None
    if value.startswith("@"):
        if not _DOMAIN_RE.match(value[1:]):
            return f"not a domain after '@': {value!r}"
        return None
    return check_address(value)


def normalize_address(value: str) -> str:
    """Envelope address as matched: without ``<>``, lower case."""
    value = value.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    return value.lower()


class AddressMatcher:
    """One compiled pattern; called with a normalized address."""

    __slots__ = ("_exact", "_regex", "_suffix", "pattern")

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self._exact: str | None = None
        self._suffix: str | None = None
        self._regex: re.Pattern[str] | None = None
        lowered = pattern.lower()
        if pattern == "<>":
            self._exact = ""
        elif _GLOB_CHARS & set(pattern):
            self._regex = re.compile(fnmatch.translate(lowered), re.DOTALL)
        elif pattern.startswith("@"):
            self._suffix = lowered
        else:
            self._exact = lowered

    def __call__(self, address: str) -> bool:
        if self._exact is not None:
            return address == self._exact
        if self._suffix is not None:
            # '@example.com' is the domain itself: 'x@sub.example.com' does not end with it
            # after the '@', because the character before 'example' is '.', not '@'.
            return address.endswith(self._suffix) and address.count("@") == 1
        assert self._regex is not None
        return self._regex.match(address) is not None


def compile_address_pattern(pattern: str) -> AddressMatcher:
    """Compile a pattern checked by ``check_address_pattern``."""
    return AddressMatcher(pattern)
