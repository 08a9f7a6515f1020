"""One message, from the end of DATA to our reply.

A front (SMTP, milter) hands an ``InboundMessage`` to a ``MessageProcessor``; the
``Pipeline`` parses it once, builds the context the rules see, skips what must not be
classified, classifies, runs the rules, writes the gateway's headers, hands the message
to the next hop and writes the one log line. ``cm-gateway classify`` and ``explain``
prepare messages with the same functions.
"""

from __future__ import annotations

from ._build import build_processor
from ._given import GivenPredictions, load_predictions_file, parse_predictions
from ._inbound import InboundMessage, MessageDecider, MessageEdits, MessageProcessor
from ._prepare import (
    Prepared,
    assumed_envelope,
    classify_message,
    defers,
    gateway_headers,
    message_context,
    prepare_message,
    skip_reason,
)

__all__ = [
    "GivenPredictions",
    "InboundMessage",
    "MessageDecider",
    "MessageEdits",
    "MessageProcessor",
    "Prepared",
    "assumed_envelope",
    "build_processor",
    "classify_message",
    "defers",
    "gateway_headers",
    "load_predictions_file",
    "message_context",
    "parse_predictions",
    "prepare_message",
    "skip_reason",
]
