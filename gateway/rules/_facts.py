"""What one evaluation knows about the message, computed once and shared by every
predicate and action of every rule (label lookup by name, lowered addresses...)."""

from __future__ import annotations

from datetime import UTC, datetime

from gateway.context import MessageContext
from gateway.predictions import Label

from ._addresses import normalize_address

__all__ = ["Facts", "document_sentiment"]


def document_sentiment(ctx: MessageContext) -> tuple[float | None, str]:
    """The sentiment a ``sentiment`` condition compares, and where it came from.

    The document sentiment when the model gave one; otherwise the mean of the sentiments
    of the predicted labels that carry one; otherwise None (the condition never holds).
    """
    prediction = ctx.prediction
    if prediction is None:
        return None, "no prediction"
    if prediction.sentiment is not None:
        return prediction.sentiment, "document"
    values = [lb.sentiment for lb in prediction.labels if lb.sentiment is not None]
    if not values:
        return None, "no sentiment predicted"
    return sum(values) / len(values), f"mean of {len(values)} label sentiments"


class Facts:
    """Per-evaluation view of a ``MessageContext``."""

    __slots__ = (
        "_at",
        "_placeholders",
        "classified",
        "ctx",
        "labels",
        "mail_from",
        "rcpts",
        "sentiment",
        "sentiment_source",
        "threshold",
    )

    def __init__(self, ctx: MessageContext, threshold: float) -> None:
        self.ctx = ctx
        self.threshold = threshold
        prediction = ctx.prediction
        self.classified = ctx.status.classified and prediction is not None
        self.labels: dict[tuple[str, ...], Label] = (
            {lb.name: lb for lb in prediction.labels} if prediction is not None else {}
        )
        self.sentiment, self.sentiment_source = document_sentiment(ctx)
        self.mail_from = normalize_address(ctx.mail_from)
        self.rcpts = tuple(normalize_address(r) for r in ctx.rcpt_tos)
        self._placeholders: dict[str, str] | None = None
        self._at = ctx.at

    @property
    def at(self) -> datetime:
        """The moment ``time`` conditions compare: the context's, else now (once)."""
        if self._at is None:
            self._at = datetime.now(UTC)
        return self._at

    def unclassified_text(self) -> str:
        return f"no prediction (status {self.ctx.status.header_value})"

    def placeholders(self, rule: str) -> dict[str, str]:
        """Values of the ``add_header`` placeholders (see ``placeholders``)."""
        if self._placeholders is None:
            prediction = self.ctx.prediction
            labels = top_label = top_probability = ""
            if prediction is not None:
                labels = prediction.labels_summary()
                top = prediction.top_label
                if top is not None:
                    top_label = top.full_name
                    top_probability = f"{top.probability:.2f}"
            version = self.ctx.model_version
            self._placeholders = {
                "labels": labels,
                "top_label": top_label,
                "top_probability": top_probability,
                "model_version": "" if version is None else str(version),
            }
        # One dict per evaluation, shared by the rules: only {rule} differs between them.
        self._placeholders["rule"] = rule
        return self._placeholders
