"""``RuleSet.evaluate``: run the compiled rules over one message, in order.

Audit: a rule is audited when the rule set runs with ``mode="audit"``, when its file says
``audit: true`` at the top, or when the rule itself says ``audit: true``. An audited rule
is evaluated and recorded in ``Decision.matches`` with the actions it would have taken,
and changes nothing: its actions do not reach the decision, and its ``stop`` does not stop
the enforced rules after it (auditing must not change what the others do). The shadow
verdict — what would happen if the audited rules were enforced, stops included — is
``Decision.audit_verdict``. When the whole set is audited, stops apply as usual, so that
``matches`` and ``verdicts`` show exactly what enforcing would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from gateway.context import MessageContext
from gateway.logsetup import get_logger
from gateway.predictions import join_label, split_label

from ._actions import Draft, Effect
from ._decision import Decision, RuleMatch, RuleVerdict, finalize
from ._facts import Facts
from ._lint import RuleWarning, lint
from ._rule import Rule

__all__ = ["Mode", "RuleSet"]

Mode = Literal["enforce", "audit"]
_log = get_logger("cm-gateway.rules")
_new = tuple.__new__


class RuleSet:
    """Rules loaded from one or more files, in evaluation order."""

    __slots__ = (
        "_any_audit",
        "_header_names",
        "files",
        "list_files",
        "mode",
        "rules",
        "thread_rules",
    )

    def __init__(
        self,
        rules: Sequence[Rule],
        *,
        mode: Mode = "enforce",
        files: Sequence[str] = (),
        list_files: Sequence[str] = (),
    ):
        self.rules = tuple(rules)
        self.mode: Mode = mode
        self.files = tuple(files)
        self.list_files = tuple(list_files)
        # The rules some 'thread: {matched: ...}' names: the only ones worth remembering
        # per conversation (none: the pipeline neither looks threads up nor records them).
        self.thread_rules = frozenset(
            name
            for r in self.rules
            if r.model.when is not None
            for name in _thread_names(r.model.when.model_dump(by_alias=True))
        )
        # The shadow run (audit_verdict) only matters when some rule is audited.
        self._any_audit = mode == "audit" or any(r.audit for r in self.rules)
        self._header_names = frozenset(
            name.lower()
            for rule in self.rules
            for action in rule.actions
            for name in action.header_names
        )

    def __len__(self) -> int:
        return len(self.rules)

    def __repr__(self) -> str:
        return f"RuleSet({len(self.rules)} rules, mode={self.mode!r})"

    @property
    def watched_files(self) -> tuple[str, ...]:
        """The files whose change reloads this rule set: rule files and list files."""
        return self.files + self.list_files

    @property
    def audit(self) -> bool:
        """Nothing this rule set decides can change a message."""
        return self.mode == "audit" or (bool(self.rules) and all(r.audit for r in self.rules))

    def labels_referenced(self) -> set[str]:
        """Every label name a ``label`` condition names, ``A > B`` spelling; for
        ``Parent > *`` the parent's name (nothing for a bare ``*``)."""
        out: set[str] = set()
        for rule in self.rules:
            if rule.model.when is not None:
                _collect_labels(rule.model.when.model_dump(by_alias=True), out)
        return out

    def header_names(self) -> frozenset[str]:
        """Lower-cased names of every header field a rule can add (``add_header``,
        ``quarantine``...): the pipeline strips them from untrusted peers' mail, so that
        a sender cannot forge what a rule writes."""
        return self._header_names

    def warnings(self) -> list[RuleWarning]:
        """Rules that can never take effect (see ``gateway.rules._lint``)."""
        return lint(self.rules, self.mode)

    def evaluate(self, ctx: MessageContext, *, default_threshold: float) -> Decision:
        """Evaluate every rule in order; never raises, same input -> same Decision.

        ``default_threshold`` is the ``min_probability`` of label conditions that give
        none (the configured classifier threshold)."""
        try:
            return self._evaluate(ctx, default_threshold)
        except Exception as exc:  # a bug outside any one rule: change nothing
            _log.error("rules_evaluate_failed", error=type(exc).__name__)
            why = f"error: {type(exc).__name__}: {exc}"
            try:
                original = tuple(ctx.rcpt_tos)
            except Exception:
                original = ()
            return Decision(
                verdict="deliver",
                reply=None,
                recipients=original,
                audit=self.audit,
                verdicts=tuple(RuleVerdict(r.name, False, None, why) for r in self.rules),
            )

    def _evaluate(self, ctx: MessageContext, threshold: float) -> Decision:
        facts = Facts(ctx, threshold)
        audit_all = self.mode == "audit"
        # When nothing is enforced, stops apply as in enforce mode: the trace is then
        # exactly what enforcing would do.
        all_audited = self.audit
        any_audited = self._any_audit
        real, shadow = Draft(), Draft()
        stopped_by: str | None = None  # an enforced stop: later rules are skipped
        shadow_stopped_by: str | None = None  # any stop, audited included
        audit_matched = False
        verdicts: list[RuleVerdict] = []
        matches: list[RuleMatch] = []
        hit: list[str] = []
        for rule in self.rules:
            if not rule.enabled:
                verdicts.append(RuleVerdict(rule.name, False, "disabled", "rule is disabled"))
                continue
            if stopped_by is not None:
                verdicts.append(
                    RuleVerdict(rule.name, False, "after stop", f"stopped by '{stopped_by}'")
                )
                continue
            audited = audit_all or rule.audit
            effects: list[Effect] = []
            try:
                held, why = rule.predicate(facts)
                if held:
                    effects = [action.prepare(facts) for action in rule.actions]
            except Exception as exc:
                _log.warning("rule_failed", rule=rule.name, error=type(exc).__name__)
                held, why = False, f"error: {type(exc).__name__}: {exc}"
            if shadow_stopped_by is not None:
                why += f" (an audited stop in '{shadow_stopped_by}' would have skipped this rule)"
            # tuple.__new__ skips the NamedTuples' Python-level __new__: this loop is
            # the hot path (100 rules per message).
            verdicts.append(_new(RuleVerdict, (rule.name, held, None, why)))
            if not held:
                continue
            described = tuple([e.description for e in effects])
            matches.append(
                _new(RuleMatch, (rule.name, audited, why, described, rule.stop, rule.source))
            )
            if any_audited and shadow_stopped_by is None:
                for effect in effects:
                    shadow.add(effect)
                audit_matched = audit_matched or audited
                if rule.stop:
                    shadow_stopped_by = rule.name
            if not audited:
                for effect in effects:
                    real.add(effect)
                hit.append(rule.name)
            if rule.stop and (not audited or all_audited):
                stopped_by = rule.name
        original = tuple(ctx.rcpt_tos)
        outcome = finalize(real, original)
        return Decision(
            verdict=outcome.verdict,
            reply=outcome.reply,
            recipients=outcome.recipients,
            add_headers=outcome.add_headers,
            subject_prefixes=outcome.subject_prefixes,
            quarantine_address=outcome.quarantine_address,
            hold=outcome.hold,
            matches=tuple(matches),
            rules_hit=tuple(hit),
            audit=self.audit,
            verdicts=tuple(verdicts),
            audit_verdict=finalize(shadow, original).verdict if audit_matched else None,
            remove_headers=outcome.remove_headers,
            route=outcome.route,
        )


def _collect_labels(condition: object, out: set[str]) -> None:
    if isinstance(condition, dict):
        label = condition.get("label")
        if isinstance(label, str):
            parts = split_label(label)
            if parts and parts[-1] == "*":
                parts = parts[:-1]
            if parts:
                out.add(join_label(parts))
        for key in ("all", "any"):
            for child in condition.get(key) or ():
                _collect_labels(child, out)
        _collect_labels(condition.get("not"), out)


def _thread_names(condition: object) -> list[str]:
    if not isinstance(condition, dict):
        return []
    out = []
    thread = condition.get("thread")
    if isinstance(thread, dict) and isinstance(thread.get("matched"), str):
        out.append(thread["matched"])
    for key in ("all", "any"):
        for child in condition.get(key) or ():
            out.extend(_thread_names(child))
    out.extend(_thread_names(condition.get("not")))
    return out
