"""What the gateway would do with one message file, without sending anything.

Shared by ``cm-gateway explain`` and the rule-set fixture tests, so that a fixture's
expected decision is exactly what ``explain`` shows for it.

    load_predictions_file(path)     -> GivenPredictions   (raises ConfigError)
    assumed_envelope(parsed)        -> (mail_from, rcpt_tos)
    message_context(parsed, ...)    -> MessageContext
    skip_reason(config, ctx)        -> str | None
    gateway_headers(ctx, decision)  -> [(name, value)]     values not yet sanitized

The ``--predictions`` file holds one document's prediction, or a whole
``predict-raw-emails`` response with exactly one document, or ``{"unclassified": reason}``
/ ``{"skipped": reason}`` (see rules/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.classify import parse_prediction_batch
from gateway.config import Config
from gateway.context import CLASSIFIED, ClassificationStatus, MessageContext
from gateway.errors import ConfigError, MalformedResponseError
from gateway.mail import ParsedMessage
from gateway.predictions import DocumentPrediction, ModelInfo
from gateway.rules import Decision
from gateway.textfile import read_text

__all__ = [
    "GivenPredictions",
    "assumed_envelope",
    "gateway_headers",
    "load_predictions_file",
    "message_context",
    "parse_predictions",
    "skip_reason",
]

HEADER_PREFIX = "X-CM-"


@dataclass(frozen=True, slots=True)
class GivenPredictions:
    """Predictions read from a file: what the classifier would have answered."""

    prediction: DocumentPrediction | None
    status: ClassificationStatus
    model_version: int | None


def _sentiment(value: Any) -> Any:
    # The API sends {"total": x} per document; one-document files often say just x.
    if isinstance(value, dict):
        return value.get("total")
    return value


def _why(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "prediction"
    return f"{loc}: {err['msg']}"


def parse_predictions(data: Any) -> GivenPredictions:
    """Any of the accepted shapes -> ``GivenPredictions``; raises ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    for state in ("unclassified", "skipped"):
        if state in data:
            reason = data[state]
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"{state!r} needs a reason, e.g. {{{state!r}: 'timeout'}}")
            return GivenPredictions(None, ClassificationStatus(state, reason.strip()), None)
    if isinstance(data.get("predictions"), list):
        count = len(data["predictions"])
        if count != 1:
            raise ValueError(f"the response holds {count} documents; exactly one is needed")
        try:
            batch = parse_prediction_batch(data, 1)
        except MalformedResponseError as exc:
            raise ValueError(str(exc)) from None
        return GivenPredictions(batch.predictions[0], CLASSIFIED, batch.model_version)
    try:
        prediction = DocumentPrediction.model_validate(
            {
                "labels": data.get("labels") or (),
                "entities": data.get("entities") or (),
                "label_properties": data.get("label_properties") or (),
                "sentiment": _sentiment(data.get("sentiment")),
            }
        )
        model = ModelInfo.model_validate(data["model"]) if data.get("model") else None
    except ValidationError as exc:
        raise ValueError(_why(exc)) from None
    return GivenPredictions(prediction, CLASSIFIED, model.version if model else None)


def load_predictions_file(path: str | Path) -> GivenPredictions:
    """Read a ``--predictions`` file; errors name the file (and line:column for JSON)."""
    file = str(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not JSON: {exc.msg}", file=file, where=f"{exc.lineno}:{exc.colno}"
        ) from None
    try:
        return parse_predictions(data)
    except ValueError as exc:
        raise ConfigError(str(exc), file=file) from None


def _header_addresses(parsed: ParsedMessage, name: str) -> list[str]:
    values = [v for k, v in parsed.headers if k.lower() == name]
    return [addr for _, addr in getaddresses(values) if "@" in addr]


def assumed_envelope(parsed: ParsedMessage) -> tuple[str, tuple[str, ...]]:
    """A file has no envelope: the sender is the first From address, the recipients
    are the To and Cc addresses (deduplicated, in order)."""
    mail_from = parsed.from_addresses[0] if parsed.from_addresses else ""
    rcpts: list[str] = []
    seen: set[str] = set()
    for addr in (*parsed.to_addresses, *_header_addresses(parsed, "cc")):
        if addr.lower() not in seen:
            seen.add(addr.lower())
            rcpts.append(addr)
    return mail_from, tuple(rcpts)


def message_context(
    parsed: ParsedMessage,
    *,
    mail_from: str,
    rcpt_tos: Sequence[str],
    prediction: DocumentPrediction | None,
    status: ClassificationStatus,
    model_version: int | None,
) -> MessageContext:
    """The ``MessageContext`` the rules see for this parsed message."""
    return MessageContext(
        mail_from=mail_from,
        rcpt_tos=tuple(rcpt_tos),
        headers=parsed.headers,
        size=parsed.size,
        attachments=parsed.attachments,
        prediction=prediction if status.classified else None,
        status=status,
        model_version=model_version,
        message_id=parsed.message_id,
        subject=parsed.subject,
    )


def skip_reason(config: Config, ctx: MessageContext) -> str | None:
    """Why the gateway would not send this message to the classifier, if it would not
    (``classifier.skip_bounces``, ``skip_auto_submitted``, ``classify_max_size``)."""
    settings = config.classifier
    if settings.skip_bounces and not ctx.mail_from:
        return "bounce"
    if settings.skip_auto_submitted and any(
        v.strip().lower().startswith("auto-") for v in ctx.header_values("Auto-Submitted")
    ):
        return "auto-submitted"
    if ctx.size > settings.classify_max_size:
        return "too-large"
    return None


def gateway_headers(ctx: MessageContext, decision: Decision) -> list[tuple[str, str]]:
    """The header fields the gateway prepends (DESIGN.md §6), values not sanitized:
    ``X-CM-Labels``, ``X-CM-Model``, ``X-CM-Status``, ``X-CM-Rules``, then the rules'."""
    out: list[tuple[str, str]] = []
    if ctx.prediction is not None and ctx.status.classified:
        summary = ctx.prediction.labels_summary()
        if summary:
            out.append((HEADER_PREFIX + "Labels", summary))
    if ctx.model_version is not None:
        out.append((HEADER_PREFIX + "Model", str(ctx.model_version)))
    out.append((HEADER_PREFIX + "Status", ctx.status.header_value))
    if decision.rules_hit:
        out.append((HEADER_PREFIX + "Rules", ", ".join(decision.rules_hit)))
    if not decision.audit:
        out.extend(decision.add_headers)
        if decision.hold is not None:
            # The milter front also asks the MTA to hold; the SMTP front has only this
            # header, which the shipped Postfix reinjection header_checks turn into HOLD.
            out.append((HEADER_PREFIX + "Hold", decision.hold))
    return out
