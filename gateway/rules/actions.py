"""Actions compiled into small objects, and the draft they fill in.

An action stays data until the SMTP side applies the ``Decision``: at evaluation time
``prepare`` turns it into an ``Effect`` (placeholders expanded), and ``Draft.add`` records
the effect. Preparing every effect of a rule before adding any means a rule contributes
all of its actions or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from ..replies import Reply, rule_defer, rule_reject
from .facts import Facts
from .placeholders import Template, parse_template

__all__ = [
    "QUARANTINE_HEADER",
    "Action",
    "AddHeader",
    "Bcc",
    "Defer",
    "Discard",
    "Draft",
    "Effect",
    "PrefixSubject",
    "Quarantine",
    "Redirect",
    "Reject",
]

QUARANTINE_HEADER = "X-CM-Quarantine"


class Effect(NamedTuple):
    """One action of one matched rule, ready to apply."""

    kind: str
    headers: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()
    text: str = ""
    reply: Reply | None = None

    def describe(self) -> str:
        """For ``explain`` and logs, e.g. ``redirect -> ap@example.com``."""
        if self.kind == "add_header":
            return "add_header " + ", ".join(f"{n}: {v}" for n, v in self.headers)
        if self.kind in ("bcc", "redirect", "quarantine"):
            return f"{self.kind} -> " + ", ".join(self.addresses)
        if self.kind == "prefix_subject":
            return f"prefix_subject {self.text!r}"
        if self.reply is not None:
            return f"{self.kind} {self.reply}"
        return self.kind


class Action(Protocol):
    text: str

    def prepare(self, facts: Facts, rule: str) -> Effect: ...


class AddHeader:
    __slots__ = ("items", "text")

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        self.items: tuple[tuple[str, Template], ...] = tuple(
            (name, parse_template(value)) for name, value in items
        )
        self.text = "add_header " + ", ".join(f"{n}: {v}" for n, v in items)

    def prepare(self, facts: Facts, rule: str) -> Effect:
        if all(not t.names for _, t in self.items):
            return Effect("add_header", headers=tuple((n, t.text) for n, t in self.items))
        values = facts.placeholders(rule)
        return Effect("add_header", headers=tuple((n, t.render(values)) for n, t in self.items))


class PrefixSubject:
    __slots__ = ("effect", "text")

    def __init__(self, prefix: str) -> None:
        self.effect = Effect("prefix_subject", text=prefix)
        self.text = f"prefix_subject {prefix!r}"

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return self.effect


class _Addresses:
    __slots__ = ("effect", "text")
    kind = ""

    def __init__(self, addresses: Sequence[str]) -> None:
        self.effect = Effect(self.kind, addresses=tuple(addresses))
        self.text = f"{self.kind} " + ", ".join(addresses)

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return self.effect


class Bcc(_Addresses):
    __slots__ = ()
    kind = "bcc"


class Redirect(_Addresses):
    __slots__ = ()
    kind = "redirect"


class Quarantine:
    """Redirect to one address and mark the message ``X-CM-Quarantine: <rule>``."""

    __slots__ = ("address", "text")

    def __init__(self, address: str) -> None:
        self.address = address
        self.text = f"quarantine {address}"

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return Effect("quarantine", addresses=(self.address,), headers=((QUARANTINE_HEADER, rule),))


class Reject:
    __slots__ = ("effect", "text")

    def __init__(self, text: str) -> None:
        self.effect = Effect("reject", reply=rule_reject(text))
        self.text = f"reject {text!r}"

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return self.effect


class Defer:
    __slots__ = ("effect", "text")

    def __init__(self, text: str) -> None:
        self.effect = Effect("defer", reply=rule_defer(text))
        self.text = f"defer {text!r}"

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return self.effect


class Discard:
    __slots__ = ("effect", "text")

    def __init__(self) -> None:
        self.effect = Effect("discard")
        self.text = "discard"

    def prepare(self, facts: Facts, rule: str) -> Effect:
        return self.effect


class Draft:
    """What the matched rules asked for so far, before precedence is applied."""

    __slots__ = (
        "bcc",
        "defer",
        "discard",
        "headers",
        "prefixes",
        "quarantine",
        "redirect",
        "reject",
    )

    def __init__(self) -> None:
        self.reject: Reply | None = None
        self.defer: Reply | None = None
        self.discard = False
        self.quarantine: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self.redirect: tuple[str, ...] | None = None
        self.bcc: list[str] = []
        self.headers: list[tuple[str, str]] = []
        self.prefixes: list[str] = []

    def add(self, effect: Effect) -> None:
        kind = effect.kind
        if kind == "add_header":
            self.headers.extend(effect.headers)
        elif kind == "prefix_subject":
            if effect.text not in self.prefixes:
                self.prefixes.append(effect.text)
        elif kind == "bcc":
            self.bcc.extend(effect.addresses)
        elif kind == "redirect":
            self.redirect = effect.addresses  # a later redirect replaces an earlier one
        elif kind == "quarantine":
            self.quarantine = (effect.addresses[0], effect.headers)  # later replaces, too
        elif kind == "reject":
            self.reject = self.reject or effect.reply  # the first reject's text is sent
        elif kind == "defer":
            self.defer = self.defer or effect.reply
        elif kind == "discard":
            self.discard = True
        else:  # pragma: no cover - the compiler only builds the kinds above
            raise ValueError(f"unknown effect {kind!r}")
