"""Rules that can never take effect, for ``rules check``.

- a disabled rule;
- a conjunction (one condition mapping, or ``all``) that asks for ``unclassified: true``
  together with a condition that needs a prediction (``label``, ``sentiment``, ``entity``,
  ``label_property``), or for both ``unclassified: true`` and ``false``;
- a rule after an enforced ``stop`` rule whose condition is implied by its own: the
  earlier rule has no condition, the same condition, or a subset of its conjuncts.

And one note per rule with a ``hold`` action: only an MTA can hold a message, so what
it does depends on the front (``HOLD_NOTE``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ._model import ConditionModel
from ._rule import Rule

__all__ = ["HOLD_NOTE", "RuleWarning", "conjuncts", "lint"]

HOLD_NOTE = (
    "hold: the milter front puts the message in the MTA's hold queue (Postfix: release it"
    " with postsuper -H); the SMTP front can only write X-CM-Hold, which the shipped Postfix"
    " configuration (deploy/postfix, cmgw-cleanup header_checks) turns into HOLD - any other"
    " next hop delivers the message with that header"
)

_NEEDS_PREDICTION = ("label", "sentiment", "entity", "label_property")


class RuleWarning(tuple[str, int, str, str]):
    """(file, line, rule, text): a rule that can never take effect."""

    __slots__ = ()

    def __new__(cls, file: str, line: int, rule: str, text: str) -> RuleWarning:
        return super().__new__(cls, (file, line, rule, text))

    @property
    def file(self) -> str:
        return self[0]

    @property
    def line(self) -> int:
        return self[1]

    @property
    def rule(self) -> str:
        return self[2]

    @property
    def text(self) -> str:
        return self[3]

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: rule '{self.rule}': {self.text}"


def _dump(condition: ConditionModel) -> dict[str, Any]:
    return condition.model_dump(by_alias=True, exclude_none=True)


def conjuncts(condition: dict[str, Any] | None) -> frozenset[str]:
    """The condition as a set of canonical conjuncts (``all`` flattened, a label with
    its probability bounds as one conjunct). A rule holds only if all of them hold."""
    if not condition:
        return frozenset()
    out: set[str] = set()
    for key, value in condition.items():
        if key in ("min_probability", "max_probability"):
            continue
        if key == "all":
            for child in value:
                out |= conjuncts(child)
        elif key == "label":
            bounds = {k: condition.get(k) for k in ("min_probability", "max_probability")}
            out.add(json.dumps({"label": value, **bounds}, sort_keys=True))
        else:
            out.add(json.dumps({key: value}, sort_keys=True))
    return frozenset(out)


def _contradiction(condition: dict[str, Any]) -> str | None:
    flat: list[tuple[str, Any]] = []

    def walk(cond: dict[str, Any]) -> None:
        for key, value in cond.items():
            if key == "all":
                for child in value:
                    walk(child)
            else:
                flat.append((key, value))

    walk(condition)
    unclassified = {value for key, value in flat if key == "unclassified"}
    if unclassified == {True, False}:
        return "asks for unclassified: true and false at once"
    if True in unclassified:
        needs = sorted({key for key, _ in flat if key in _NEEDS_PREDICTION})
        if needs:
            return (
                f"asks for unclassified: true together with {', '.join(needs)} (needs a prediction)"
            )
    return None


def _contradictions(condition: dict[str, Any]) -> list[str]:
    """Contradictions in this mapping, and in nested any/not children."""
    found = []
    problem = _contradiction(condition)
    if problem:
        found.append(problem)
    for child in condition.get("any", ()):
        found.extend(_contradictions(child))
    for child in condition.get("all", ()):
        found.extend(p for p in _contradictions(child) if p not in found)
    return found


def lint(rules: Sequence[Rule], mode: str) -> list[RuleWarning]:
    """The warnings of a rule set, in rule order (``mode``: the set's enforce/audit)."""
    out: list[RuleWarning] = []
    stops: list[tuple[str, frozenset[str]]] = []
    for rule in rules:
        if not rule.enabled:
            out.append(RuleWarning(rule.file, rule.line, rule.name, "disabled: never evaluated"))
            continue
        if any(a.hold is not None for a in rule.model.actions):
            out.append(RuleWarning(rule.file, rule.line, rule.name, HOLD_NOTE))
        dumped = _dump(rule.model.when) if rule.model.when is not None else {}
        for problem in _contradictions(dumped):
            out.append(RuleWarning(rule.file, rule.line, rule.name, f"can never match: {problem}"))
        mine = conjuncts(dumped)
        for stopper, theirs in stops:
            if theirs <= mine:
                how = (
                    "has no condition"
                    if not theirs
                    else (
                        "has the same condition"
                        if theirs == mine
                        else "has a more general condition"
                    )
                )
                out.append(
                    RuleWarning(
                        rule.file,
                        rule.line,
                        rule.name,
                        f"shadowed: earlier rule '{stopper}' stops and {how}",
                    )
                )
                break
        if rule.stop and not rule.audit and mode != "audit":
            stops.append((rule.name, mine))
    return out
