"""One recipe to make a message ready for the classifier and the rules, shared by
``cm-gateway serve`` (the pipeline), ``classify`` and ``explain``:

    prepared = prepare_message(config, raw, mail_from=..., rcpt_tos=...)
        parse (whole, or only the header block past ``classify_max_size`` or for a
        message a gateway before us classified) -> context -> skip -> document
    ctx, error = await classify_message(classifier, prepared, deadline=...)
    gateway_headers(ctx, decision)   the X-CM-* fields and the rules' own, in order

``classify_message`` holds the one deadline of a classification
(``config.classifier.deadline``) and turns every classifier failure into an
``unclassified; reason=<kind>`` context plus the error; what to do with it
(``on_error``) is the caller's: ``defers(config, error)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import getaddresses

from gateway.config import Config
from gateway.context import CLASSIFIED, ClassificationStatus, Classifier, MessageContext
from gateway.documents import RawEmailDocument
from gateway.errors import ClassifierError, ClassifierTimeout, MalformedResponseError
from gateway.mail import ParsedMessage, build_document, parse_headers, parse_message
from gateway.predictions import DocumentPrediction
from gateway.rules import Decision

__all__ = [
    "ALREADY_CLASSIFIED",
    "HEADER_PREFIX",
    "Prepared",
    "assumed_envelope",
    "classify_message",
    "defers",
    "gateway_headers",
    "message_context",
    "prepare_message",
    "skip_reason",
]

HEADER_PREFIX = "X-CM-"
ALREADY_CLASSIFIED = "already-classified"


@dataclass(frozen=True, slots=True)
class Prepared:
    """A message ready for the classifier: ``document`` is None when it is not to be
    classified (``ctx.status`` says why: skipped, with its reason)."""

    parsed: ParsedMessage
    ctx: MessageContext
    document: RawEmailDocument | None


def prepare_message(
    config: Config,
    raw: bytes,
    *,
    mail_from: str | None = None,
    rcpt_tos: Sequence[str] | None = None,
    already_classified: bool = False,
) -> Prepared:
    """Parse ``raw`` once and build what the classifier and the rules need. Never raises
    on the message's content; may take seconds on a hostile one (run it in a thread).
    Without an envelope (a message from a file) it is ``assumed_envelope``'s."""
    if already_classified:
        status = ClassificationStatus("skipped", ALREADY_CLASSIFIED)
        parsed = parse_headers(raw)
    elif len(raw) > config.classifier.classify_max_size:
        status = CLASSIFIED  # skip_reason() names it, after bounce / auto-submitted
        parsed = parse_headers(raw)
    else:
        status = CLASSIFIED
        parsed = parse_message(raw)
    no_envelope = mail_from is None
    if mail_from is None or rcpt_tos is None:
        assumed_from, assumed_rcpts = assumed_envelope(parsed)
        mail_from = assumed_from if mail_from is None else mail_from
        rcpt_tos = assumed_rcpts if rcpt_tos is None else rcpt_tos
    ctx = message_context(
        parsed,
        mail_from=mail_from,
        rcpt_tos=rcpt_tos,
        prediction=None,
        status=status,
        model_version=None,
    )
    if status.classified:
        reason = skip_reason(config, ctx)
        if reason == "bounce" and no_envelope and not parsed.from_addresses:
            # A file has no envelope: no From says nothing of a null sender.
            reason = skip_reason(config, dataclasses.replace(ctx, mail_from="<no From>"))
        if reason is not None:
            ctx = dataclasses.replace(ctx, status=ClassificationStatus("skipped", reason))
    if not ctx.status.classified:
        return Prepared(parsed, ctx, None)
    document = build_document(parsed, raw, user_properties=config.classifier.user_properties)
    return Prepared(parsed, ctx, document)


async def classify_message(
    classifier: Classifier, prepared: Prepared, *, deadline: float
) -> tuple[MessageContext, ClassifierError | None]:
    """The prepared message's context once classified, or unclassified with the error
    (a timeout past ``deadline`` seconds included). A skipped message is returned as is."""
    ctx, document = prepared.ctx, prepared.document
    if document is None:
        return ctx, None
    try:
        try:
            async with asyncio.timeout(deadline):
                batch = await classifier.predict_raw_emails([document])
        except TimeoutError:
            raise ClassifierTimeout(f"no prediction within {deadline:g}s") from None
        if len(batch.predictions) != 1:
            # The contract is one prediction per document; anything else is a malformed
            # answer, handled like any classifier failure.
            raise MalformedResponseError(f"{len(batch.predictions)} predictions for 1")
    except ClassifierError as exc:
        status = ClassificationStatus("unclassified", exc.kind)
        return dataclasses.replace(ctx, status=status), exc
    prediction: DocumentPrediction = batch.predictions[0]
    classified = dataclasses.replace(
        ctx, prediction=prediction, model_version=batch.model_version, status=CLASSIFIED
    )
    return classified, None


def defers(config: Config, error: ClassifierError | None) -> bool:
    """A failed classification is answered ``451 4.4.3`` (``on_error = "defer"``)."""
    return error is not None and config.classifier.on_error == "defer"


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
    """The header fields the gateway prepends, values not sanitized:
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
