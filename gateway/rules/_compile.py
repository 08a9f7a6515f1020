"""Validated rule models -> ``Rule`` objects made of predicates and actions, once, at
load time (regexes compiled, globs translated, templates parsed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from gateway.predictions import split_label

from . import _actions as act
from . import _predicates as pred
from . import _predicates_message as msg
from ._addresses import AddressMatcher, compile_address_pattern
from ._model import ActionModel, ConditionModel, ListRef, RuleModel
from ._rule import Rule
from ._time import TimeIs

Lists = Mapping[str, Sequence[AddressMatcher]]

__all__ = ["compile_action", "compile_condition", "compile_rule"]


def _label(model: ConditionModel) -> pred.Predicate:
    assert model.label is not None
    parts = split_label(model.label)
    if parts[-1] == "*":
        return pred.LabelDescendant(parts[:-1], model.min_probability, model.max_probability)
    return pred.LabelExact(parts, model.min_probability, model.max_probability)


def _addresses(value: list[str] | ListRef, lists: Lists) -> tuple[list[AddressMatcher], str | None]:
    if isinstance(value, ListRef):
        matchers = list(lists[value.list_])
        return matchers, f"list {value.list_} ({len(matchers)} patterns)"
    return [compile_address_pattern(p) for p in value], None


def compile_condition(model: ConditionModel, lists: Lists | None = None) -> pred.Predicate:
    """One condition mapping: its keys, in the model's order, all must hold.
    ``lists``: the patterns of the file's ``lists`` by name (checked by the loader)."""
    lists = lists or {}
    out: list[pred.Predicate] = []
    if model.label is not None:
        out.append(_label(model))
    if model.sentiment is not None:
        out.append(pred.SentimentIs(model.sentiment.below, model.sentiment.above))
    if model.entity is not None:
        out.append(pred.EntityIs(model.entity.kind, model.entity.value))
    if model.label_property is not None:
        lp = model.label_property
        out.append(pred.LabelPropertyIs(lp.name, lp.below, lp.above))
    if model.header is not None:
        h = model.header
        if h.matches is not None:
            out.append(msg.HeaderMatches(h.name, h.matches))
        elif h.contains is not None:
            out.append(msg.HeaderContains(h.name, h.contains))
        else:
            out.append(msg.HeaderExists(h.name, bool(h.exists)))
    if model.from_ is not None:
        out.append(msg.EnvelopeFrom(*_addresses(model.from_, lists)))
    if model.to is not None:
        out.append(msg.EnvelopeTo(*_addresses(model.to, lists)))
    if model.size is not None:
        out.append(msg.SizeIs(model.size.above, model.size.below))
    if model.attachment is not None:
        out.append(msg.AttachmentIs(model.attachment.name, model.attachment.content_type))
    if model.unclassified is not None:
        out.append(pred.Unclassified(model.unclassified))
    if model.time is not None:
        t = model.time
        out.append(TimeIs(t.days, t.between, t.tz))
    if model.thread is not None:
        out.append(msg.ThreadMatched(model.thread.matched))
    if model.all is not None:
        out.append(pred.AllOf([compile_condition(c, lists) for c in model.all]))
    if model.any is not None:
        out.append(pred.AnyOf([compile_condition(c, lists) for c in model.any]))
    if model.not_ is not None:
        out.append(pred.Not(compile_condition(model.not_, lists)))
    return out[0] if len(out) == 1 else pred.AllOf(out)


def compile_action(model: ActionModel, rule: str) -> act.Action:
    """One action mapping (exactly one key, checked by the model) of the rule ``rule``."""
    if model.add_header is not None:
        return act.AddHeader(list(model.add_header.items()), rule)
    if model.remove_header is not None:
        return act.RemoveHeader(model.remove_header)
    if model.prefix_subject is not None:
        return act.PrefixSubject(model.prefix_subject)
    if model.bcc is not None:
        return act.Bcc(model.bcc)
    if model.redirect is not None:
        return act.Redirect(model.redirect)
    if model.quarantine is not None:
        return act.Quarantine(model.quarantine, rule)
    if model.reject is not None:
        return act.Reject(model.reject)
    if model.defer is not None:
        return act.Defer(model.defer)
    if model.route is not None:
        return act.Route(model.route)
    if model.hold is not None:
        return act.Hold(model.hold, rule)
    return act.Discard()


def compile_rule(
    model: RuleModel, *, file: str, line: int, file_audit: bool, lists: Lists | None = None
) -> Rule:
    """A ``Rule`` ready to evaluate; ``file_audit`` is the file's top-level ``audit``."""
    predicate = compile_condition(model.when, lists) if model.when is not None else pred.Always()
    return Rule(
        name=model.name,
        file=file,
        line=line,
        enabled=model.enabled,
        audit=model.audit or file_audit,
        stop=model.stop,
        predicate=predicate,
        actions=tuple(compile_action(a, model.name) for a in model.actions),
        model=model,
    )
