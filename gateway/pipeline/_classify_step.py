"""The classify stage of the pipeline: one document, one prediction, or the failure."""

from __future__ import annotations

import asyncio
import dataclasses

from gateway import replies
from gateway.config import Config
from gateway.context import CLASSIFIED, ClassificationStatus, Classifier, MessageContext
from gateway.documents import RawEmailDocument
from gateway.errors import ClassifierError, ClassifierTimeout, MalformedResponseError
from gateway.mail import ParsedMessage, build_document
from gateway.predictions import DocumentPrediction
from gateway.replies import Reply

from ._big_message import PARSE_IN_THREAD
from ._msglog import MessageLog

__all__ = ["classify_one"]


async def classify_one(
    classifier: Classifier,
    config: Config,
    deadline: float,
    parsed: ParsedMessage,
    content: bytes,
    ctx: MessageContext,
    log: MessageLog,
) -> tuple[MessageContext, RawEmailDocument] | Reply:
    """Classify one message within ``deadline`` seconds: the context with its prediction
    (or ``unclassified; reason=<kind>``) and the document sent, or ``451 4.4.3`` when the
    classifier failed and ``on_error = "defer"``."""
    settings = config.classifier
    with log.stage("classify"):
        if len(content) > PARSE_IN_THREAD:
            # Like the parse: a message of many header fields takes seconds here.
            document = await asyncio.to_thread(
                build_document, parsed, content, user_properties=settings.user_properties
            )
        else:
            document = build_document(parsed, content, user_properties=settings.user_properties)
        try:
            try:
                async with asyncio.timeout(deadline):
                    batch = await classifier.predict_raw_emails([document])
            except TimeoutError:
                raise ClassifierTimeout(f"no prediction within {settings.timeout:g}s") from None
            if len(batch.predictions) != 1:
                # The contract is one prediction per document; anything else is a
                # malformed answer, handled like any classifier failure.
                raise MalformedResponseError(f"{len(batch.predictions)} predictions for 1")
        except ClassifierError as exc:
            log.set(classifier_error=exc.kind)
            if settings.on_error == "defer":
                log.set(status=f"unclassified; reason={exc.kind}")
                return replies.CLASSIFIER_DEFER
            status = ClassificationStatus("unclassified", exc.kind)
            return dataclasses.replace(ctx, status=status), document
    prediction: DocumentPrediction = batch.predictions[0]
    ctx = dataclasses.replace(
        ctx, prediction=prediction, model_version=batch.model_version, status=CLASSIFIED
    )
    return ctx, document
