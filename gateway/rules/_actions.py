"""Actions compiled into small objects, and the draft they fill in.

An action stays data until the SMTP side applies the ``Decision``: at evaluation time
``prepare`` turns it into an ``Effect`` (placeholders expanded), and ``Draft.add`` records
the effect. Preparing every effect of a rule before adding any means a rule contributes
all of its actions or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from gateway.replies import Reply, rule_defer, rule_reject

from ._facts import Facts
from ._placeholders import Template, parse_template

__all__ = [
    "QUARANTINE_HEADER",
    "Action",
    "AddHeader",
    "Bcc",
    "Defer",
    "Discard",
    "Draft",
    "Effect",
    "Hold",
    "PrefixSubject",
    "Quarantine",
    "Redirect",
    "Reject",
    "RemoveHeader",
    "Route",
]

QUARANTINE_HEADER = "X-CM-Quarantine"


class Effect(NamedTuple):
    """One action of one matched rule, ready to apply; ``description`` is for
    ``explain`` and logs (``redirect -> ap@example.com``)."""

    kind: str
    description: str
    headers: tuple[tuple[str, str], ...] = ()
    addresses: tuple[str, ...] = ()
    text: str = ""
    reply: Reply | None = None
    names: tuple[str, ...] = ()


def _header_effect(headers: tuple[tuple[str, str], ...]) -> Effect:
    described = "add_header " + ", ".join(f"{n}: {v}" for n, v in headers)
    return Effect("add_header", described, headers=headers)


class Action(Protocol):
    text: str
    # The header fields the action writes (whatever the message): stripped from what
    # untrusted peers send, so that nobody can forge them.
    header_names: tuple[str, ...]

    def prepare(self, facts: Facts) -> Effect: ...


class _Static:
    """An action whose effect does not depend on the message: built once."""

    __slots__ = ("effect", "header_names", "text")

    def __init__(self, effect: Effect, text: str) -> None:
        self.effect = effect
        self.text = text
        self.header_names = tuple(name for name, _ in effect.headers)

    def prepare(self, facts: Facts) -> Effect:
        return self.effect


class AddHeader:
    """``add_header``; values with placeholders are expanded per message."""

    __slots__ = ("effect", "header_names", "items", "rule", "text")

    def __init__(self, items: Sequence[tuple[str, str]], rule: str) -> None:
        self.rule = rule
        self.items: tuple[tuple[str, Template], ...] = tuple(
            (name, parse_template(value)) for name, value in items
        )
        self.text = "add_header " + ", ".join(f"{n}: {v}" for n, v in items)
        self.header_names = tuple(name for name, _ in items)
        self.effect: Effect | None = None
        if all(not t.names or t.names == {"rule"} for _, t in self.items):
            values = {"rule": rule}
            self.effect = _header_effect(tuple((n, t.render(values)) for n, t in self.items))

    def prepare(self, facts: Facts) -> Effect:
        if self.effect is not None:
            return self.effect
        values = facts.placeholders(self.rule)
        return _header_effect(tuple((n, t.render(values)) for n, t in self.items))


class RemoveHeader(_Static):
    """``remove_header``: every instance of each named field, from the message as it
    arrived (the fields the rules add are not affected)."""

    __slots__ = ()

    def __init__(self, names: Sequence[str]) -> None:
        listed = ", ".join(names)
        effect = Effect("remove_header", f"remove_header {listed}", names=tuple(names))
        super().__init__(effect, f"remove_header {listed}")


class PrefixSubject(_Static):
    __slots__ = ()

    def __init__(self, prefix: str) -> None:
        text = f"prefix_subject {prefix!r}"
        super().__init__(Effect("prefix_subject", text, text=prefix), text)


class Bcc(_Static):
    __slots__ = ()

    def __init__(self, addresses: Sequence[str]) -> None:
        listed = ", ".join(addresses)
        super().__init__(
            Effect("bcc", f"bcc -> {listed}", addresses=tuple(addresses)), f"bcc {listed}"
        )


class Redirect(_Static):
    __slots__ = ()

    def __init__(self, addresses: Sequence[str]) -> None:
        listed = ", ".join(addresses)
        super().__init__(
            Effect("redirect", f"redirect -> {listed}", addresses=tuple(addresses)),
            f"redirect {listed}",
        )


class Quarantine(_Static):
    """Redirect to one address and mark the message ``X-CM-Quarantine: <rule>``."""

    __slots__ = ()

    def __init__(self, address: str, rule: str) -> None:
        effect = Effect(
            "quarantine",
            f"quarantine -> {address}",
            addresses=(address,),
            headers=((QUARANTINE_HEADER, rule),),
        )
        super().__init__(effect, f"quarantine {address}")


class Reject(_Static):
    __slots__ = ()

    def __init__(self, text: str) -> None:
        reply = rule_reject(text)
        super().__init__(Effect("reject", f"reject {reply}", reply=reply), f"reject {text!r}")


class Defer(_Static):
    __slots__ = ()

    def __init__(self, text: str) -> None:
        reply = rule_defer(text)
        super().__init__(Effect("defer", f"defer {reply}", reply=reply), f"defer {text!r}")


class Discard(_Static):
    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(Effect("discard", "discard"), "discard")


class Route(_Static):
    """Deliver the whole message through the named ``[downstream.routes.NAME]``."""

    __slots__ = ()

    def __init__(self, name: str) -> None:
        super().__init__(Effect("route", f"route -> {name}", text=name), f"route {name}")


class Hold(_Static):
    """Put the message in the MTA's hold queue, with ``reason`` (``<rule>: <text>``)."""

    __slots__ = ()

    def __init__(self, text: str, rule: str) -> None:
        reason = f"{rule}: {text}" if text else rule
        super().__init__(Effect("hold", f"hold {reason!r}", text=reason), f"hold {text!r}")


class Draft:
    """What the matched rules asked for so far, before precedence is applied."""

    __slots__ = (
        "bcc",
        "defer",
        "discard",
        "headers",
        "hold",
        "prefixes",
        "quarantine",
        "redirect",
        "reject",
        "removed",
        "route",
    )

    def __init__(self) -> None:
        self.reject: Reply | None = None
        self.defer: Reply | None = None
        self.discard = False
        self.hold: str | None = None
        self.quarantine: tuple[str, tuple[tuple[str, str], ...]] | None = None
        self.redirect: tuple[str, ...] | None = None
        self.bcc: list[str] = []
        self.headers: list[tuple[str, str]] = []
        self.prefixes: list[str] = []
        self.removed: list[str] = []
        self.route: str | None = None

    def add(self, effect: Effect) -> None:
        kind = effect.kind
        if kind == "add_header":
            self.headers.extend(effect.headers)
        elif kind == "remove_header":
            known = {n.lower() for n in self.removed}
            self.removed.extend(n for n in effect.names if n.lower() not in known)
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
        elif kind == "route":
            self.route = effect.text  # a later route replaces an earlier one
        elif kind == "hold":
            self.hold = self.hold or effect.text  # the first hold's reason is kept
        else:  # pragma: no cover - the compiler only builds the kinds above
            raise ValueError(f"unknown effect {kind!r}")
