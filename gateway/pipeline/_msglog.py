"""The one structured log line per message (event ``message``).

It carries who and what (queue id, Message-ID, peer, size; with XFORWARD also the
original client and the upstream queue id, so one Postfix queue id can be followed
through Postfix's log and ours), what the model said (label
summary, status), what the rules did (rules hit, verdict, recipient count), what the next
hop answered, the reply we gave, and the time spent per stage. Never the body, never
addresses in bulk, never the token (``logsetup`` scrubs registered secrets anyway).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gateway.logsetup import get_logger
from gateway.predictions import DocumentPrediction
from gateway.replies import Reply

from ._inbound import InboundMessage

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics
    from gateway.rules import Decision

__all__ = ["MessageLog", "labels_brief", "log_discarded"]

_log = get_logger("cm-gateway.pipeline._pipeline")
_MAX_LABELS = 5
_MAX_TEXT = 200


def labels_brief(prediction: DocumentPrediction | None) -> str | None:
    """The few most probable labels, e.g. ``Finance > Invoice (0.92), Urgent (0.66)``."""
    if prediction is None:
        return None
    ordered = sorted(prediction.labels, key=lambda lb: (-lb.probability, lb.name))
    brief = ", ".join(f"{lb.full_name} ({lb.probability:.2f})" for lb in ordered[:_MAX_LABELS])
    if len(ordered) > _MAX_LABELS:
        brief += f", +{len(ordered) - _MAX_LABELS} more"
    return brief[: _MAX_TEXT * 2]


class _Stage:
    """``MessageLog.stage``'s timer: a plain context manager, not @contextmanager's
    generator (four stages per message)."""

    __slots__ = ("_fields", "_key", "_started")

    def __init__(self, fields: dict[str, Any], key: str) -> None:
        self._fields = fields
        self._key = key
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        # Also when the stage raised (the exception goes on: None is returned).
        self._fields[self._key] = round((time.perf_counter() - self._started) * 1000, 2)


class MessageLog:
    """Collects the fields of one message's log line while the pipeline runs."""

    def __init__(self, msg: InboundMessage, metrics: GatewayMetrics | None = None) -> None:
        self._started = time.perf_counter()
        self._metrics = metrics
        self.fields: dict[str, Any] = {
            "queue_id": msg.queue_id,
            "peer": msg.peer_ip,
            "size": len(msg.content),
            "rcpts_in": len(msg.rcpt_tos),
        }
        forwarded = msg.forwarded
        if forwarded is not None:
            # Validated printable ASCII of at most 255 characters (gateway.deliver._xforward).
            for key, value in (
                ("client_addr", forwarded.addr),
                ("client_name", forwarded.name),
                ("upstream_queue_id", forwarded.ident),
            ):
                if value is not None:
                    self.fields[key] = value

    def set(self, **fields: Any) -> None:
        """Add or replace fields (strings are capped: they may come from the message)."""
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > _MAX_TEXT:
                value = value[:_MAX_TEXT] + "..."
            self.fields[key] = value

    def decision(self, decision: Decision) -> None:
        """What the rules did: rules hit, verdict (``deliver`` in audit mode) and, in
        audit mode, what they would have done."""
        enforce = not decision.audit
        self.set(
            rules_hit=list(decision.rules_hit),
            verdict=decision.verdict if enforce else "deliver",
        )
        if decision.audit and decision.audit_verdict is not None:
            self.set(audit_verdict=decision.audit_verdict)
        if decision.matches and any(m.audit for m in decision.matches):
            self.set(audit_rules=[m.rule for m in decision.matches if m.audit])

    def stage(self, name: str) -> _Stage:
        """Time a stage into ``<name>_ms`` (also when it raises)."""
        return _Stage(self.fields, f"{name}_ms")

    def next_hop(self, reply: Reply | None, queue_id: str | None = None) -> None:
        """Record the next hop's own reply (and its queue id when it said one)."""
        if reply is not None:
            self.set(next_hop_code=reply.code, next_hop_reply=f"{reply.enhanced} {reply.text}")
        if queue_id:
            self.set(next_hop_queue_id=queue_id)

    def emit(self, reply: Reply) -> None:
        """Write the line, at warning level for anything but a 2xx."""
        self.fields["reply"] = f"{reply.code} {reply.enhanced}"
        self.fields["total_ms"] = round((time.perf_counter() - self._started) * 1000, 2)
        if self._metrics is not None:
            self._metrics.observe_message(self.fields, reply.code)
        if 200 <= reply.code < 300:
            _log.info("message", **self.fields)
        else:
            _log.warning("message", **self.fields)


def log_discarded(msg: InboundMessage, decision: Decision) -> None:
    """A warning line: the message was acknowledged and reaches nobody."""
    _log.warning(
        "message_discarded",
        queue_id=msg.queue_id,
        rules_hit=list(decision.rules_hit),
        reason="discard" if decision.verdict == "discard" else "no recipients",
    )
