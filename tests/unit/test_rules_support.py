"""Builders shared by the rules tests (this module holds no tests)."""

from __future__ import annotations

from typing import Any

from gateway.context import Attachment, ClassificationStatus, MessageContext
from gateway.predictions import DocumentPrediction
from gateway.rules import Decision, RuleSet, parse_rules

THRESHOLD = 0.25


def prediction(
    labels: dict[str, float] | None = None,
    *,
    sentiment: float | None = None,
    label_sentiments: dict[str, float] | None = None,
    entities: list[tuple[str, str]] = (),  # type: ignore[assignment]
    properties: dict[str, float] | None = None,
) -> DocumentPrediction:
    """A prediction with ``{"A > B": probability}`` labels, (kind, value) entities."""
    label_sentiments = label_sentiments or {}
    return DocumentPrediction.model_validate(
        {
            "labels": [
                {"name": name, "probability": p, "sentiment": label_sentiments.get(name)}
                for name, p in (labels or {}).items()
            ],
            "entities": [
                {"name": kind, "kind": kind, "formatted_value": value} for kind, value in entities
            ],
            "label_properties": [
                {"property_name": n, "value": v} for n, v in (properties or {}).items()
            ],
            "sentiment": sentiment,
        }
    )


def context(
    pred: DocumentPrediction | None = None,
    *,
    mail_from: str = "alice@customer.example",
    rcpt_tos: tuple[str, ...] = ("inbox@example.com",),
    headers: tuple[tuple[str, str], ...] = (("Subject", "Hello"),),
    size: int = 2048,
    attachments: tuple[Attachment, ...] = (),
    status: ClassificationStatus | None = None,
    model_version: int | None = 7,
) -> MessageContext:
    """A message context; unclassified when ``pred`` is None and no status is given."""
    if status is None:
        status = (
            ClassificationStatus("classified")
            if pred is not None
            else ClassificationStatus("unclassified", "timeout")
        )
    return MessageContext(
        mail_from=mail_from,
        rcpt_tos=rcpt_tos,
        headers=headers,
        size=size,
        attachments=attachments,
        prediction=pred,
        status=status,
        model_version=model_version,
    )


def rules(text: str, **kwargs: Any) -> RuleSet:
    """A rule set from YAML text."""
    return parse_rules(text, file="test.yaml", **kwargs)


def decide(text: str, ctx: MessageContext, *, threshold: float = THRESHOLD, **kw: Any) -> Decision:
    """Load ``text`` and evaluate it on ``ctx``."""
    return rules(text, **kw).evaluate(ctx, default_threshold=threshold)
