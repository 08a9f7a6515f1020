"""One compiled rule."""

from __future__ import annotations

from ._actions import Action
from ._model import RuleModel
from ._predicates import Predicate

__all__ = ["Rule"]


class Rule:
    """A rule as loaded: where it was written, its predicate and its actions.

    ``model`` is the validated rule as written (for ``explain`` and the lint)."""

    __slots__ = (
        "actions",
        "audit",
        "enabled",
        "file",
        "line",
        "model",
        "name",
        "predicate",
        "source",
        "stop",
    )

    def __init__(
        self,
        *,
        name: str,
        file: str,
        line: int,
        enabled: bool,
        audit: bool,
        stop: bool,
        predicate: Predicate,
        actions: tuple[Action, ...],
        model: RuleModel,
    ) -> None:
        self.name = name
        self.file = file
        self.line = line
        self.enabled = enabled
        self.audit = audit
        self.stop = stop
        self.predicate = predicate
        self.actions = actions
        self.model = model
        self.source = f"{file}:{line}"  # where the rule starts, for explain and logs

    @property
    def condition_text(self) -> str:
        return self.predicate.text

    @property
    def action_texts(self) -> tuple[str, ...]:
        return tuple(a.text for a in self.actions)

    def __repr__(self) -> str:
        return f"Rule({self.name!r} at {self.source})"
