"""The message pipeline: what happens between the end of DATA and our reply.

    build_processor(config) -> Pipeline          Pipeline.process(msg) -> Reply

Per message (DESIGN.md §1, §6, §7):

1. ``X-CM-*`` headers from peers outside ``smtp.trusted_networks`` are removed, so nobody
   can forge a verdict.
2. Loop checks: more ``Received`` fields than ``smtp.max_hops`` -> ``554 5.4.6``. A
   message that already carries ``X-CM-Status`` from a trusted peer was classified and
   routed by a gateway before us (e.g. a content-filter loop through Postfix): it is not
   classified (nor billed) again, no rule runs, its ``X-CM-*`` fields stay as they are,
   and it goes on to its recipients unchanged but for our ``Received`` (logged as
   ``skipped; reason=already-classified``, verdict ``pass-through``).
3. Skips: null sender, ``Auto-Submitted: auto-*``, size over ``classify_max_size``.
4. Parse (in a thread past 256 KB), build the document, classify within
   ``classifier.timeout``. A ``ClassifierError`` gives ``unclassified; reason=<kind>`` with
   ``on_error = "deliver"``, or ``451 4.4.3`` with ``on_error = "defer"``.
5. Rules -> ``Decision``; reject/defer -> its reply; discard -> 250, nothing delivered.
6. Otherwise prepend ``Received`` and the ``X-CM-*`` / rule headers (through
   ``headers.safe_header_value``), apply subject prefixes, deliver to
   ``Decision.recipients``, and answer ``250 ... queued as <our queue id>`` once the next
   hop has it, or the next hop's failure mapped by ``delivery``.

Audit mode (``rules.mode = "audit"``): the rules are evaluated and logged, and change
nothing: no reject/defer/discard, no recipient, subject or rule-header change and no
``X-CM-Rules``. The classification headers (``X-CM-Labels``, ``X-CM-Model``,
``X-CM-Status``) are still written: they describe the message, not a routing decision,
and they are what an operator compares while auditing.

Anything unexpected propagates to the SMTP front (``451 4.3.0``) after being logged with
the queue id and stage, by type only (an exception's text may quote the message).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gateway import replies
from gateway.config import Config
from gateway.context import CLASSIFIED, ClassificationStatus, Classifier, MessageContext
from gateway.deliver import Delivery
from gateway.documents import RawEmailDocument
from gateway.errors import ConfigError
from gateway.logsetup import get_logger
from gateway.mail import (
    ParsedMessage,
    header_fields,
    parse_message,
    prefix_subject,
    prepend_headers,
    strip_headers,
)
from gateway.pipeline._shadow import ShadowRunner
from gateway.replies import Reply
from gateway.rules import Decision, RuleSet, load_rules

from ._big_message import PARSE_IN_THREAD, light_parse, off_loop
from ._classify_step import classify_one
from ._edits import message_edits
from ._inbound import InboundMessage, MessageEdits
from ._msglog import MessageLog, labels_brief
from ._prepare import (
    HEADER_PREFIX,
    gateway_headers,
    message_context,
    skip_reason,
)
from ._trace import count_hops, received_header

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

__all__ = ["Pipeline"]


class _Routed(NamedTuple):
    """A message the rules decided on (``decision`` None: a trusted gateway did already)."""

    content: bytes
    ctx: MessageContext
    decision: Decision | None


_CLASSIFICATION_HEADERS = {f"{HEADER_PREFIX}{n}".lower() for n in ("Labels", "Model", "Status")}
ALREADY_CLASSIFIED = "already-classified"

_log = get_logger("cm-gateway.pipeline._pipeline")


class Pipeline:
    """The ``MessageProcessor`` of ``cm-gateway serve``."""

    def __init__(
        self,
        config: Config,
        *,
        classifier: Classifier,
        rules: RuleSet,
        delivery: Delivery,
        metrics: GatewayMetrics | None = None,
        shadow: ShadowRunner | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.classifier = classifier
        self.shadow = shadow
        self.rules = rules
        # Failed rule reloads since start (the old rules stayed): for monitoring.
        self.reload_failures = 0
        self.delivery = delivery
        self._threshold = config.classifier.default_threshold
        # The classifier enforces classifier.timeout itself (retries included) and reports
        # the last real error (server-error, rate-limited...); this outer deadline is the
        # backstop, with room for the batch window and a little scheduling slack.
        settings = config.classifier
        self._classify_deadline = settings.timeout + settings.max_wait_ms / 1000 + 0.25

    def rule_paths(self) -> list[Path]:
        """The rule files this pipeline loads (and reloads)."""
        return self.config.rule_paths()

    def reload_rules(self, *, trigger: str = "sighup") -> bool:
        """Load the rule files again and swap them in; on an error keep the old rules,
        log ``rules_reload_failed`` (file, ``line:column``) and count it."""
        paths = self.rule_paths()
        try:
            rules = load_rules(paths, mode=self.config.rules.mode)
        except ConfigError as exc:
            self.reload_failures += 1
            if self.metrics is not None:
                self.metrics.rules_reload_failures.inc()
            _log.error(
                "rules_reload_failed",
                trigger=trigger,
                file=exc.file,
                where=exc.where,
                error=str(exc),
                failures=self.reload_failures,
            )
            return False
        self.rules = rules  # one reference: a message in flight keeps the RuleSet it took
        _log.info(
            "rules_reloaded", trigger=trigger, files=[str(p) for p in paths], rules=len(rules)
        )
        return True

    async def aclose(self) -> None:
        """Release the shadow model, the classifier and the next hop."""
        try:
            if self.shadow is not None:
                await self.shadow.aclose()
            await self.classifier.aclose()
        finally:
            await self.delivery.aclose()

    async def process(self, msg: InboundMessage) -> Reply:
        """Classify, route and deliver one message; the reply to its DATA."""
        log = MessageLog(msg, self.metrics)
        where = ["start"]
        try:
            routed = await self._route(msg, log, where)
            if isinstance(routed, Reply):
                return self._done(log, routed)
            where[0] = "deliver"
            if routed.decision is None:
                return await self._relay(msg, routed.content, msg.rcpt_tos, log)
            return await self._apply(msg, routed.content, routed.ctx, routed.decision, log)
        except Exception as exc:
            self._failed(msg, where[0], exc, "smtp")
            raise

    async def decide(self, msg: InboundMessage) -> MessageEdits:
        """Classify and route one message the MTA delivers itself (the milter front):
        the decision as edits; nothing is delivered. Same log line, verdicts and
        metrics as ``process``."""
        log = MessageLog(msg, self.metrics)
        log.set(front="milter")
        where = ["start"]
        try:
            routed = await self._route(msg, log, where)
            if isinstance(routed, Reply):
                self._done(log, routed)
                return MessageEdits(verdict="refused", reply=routed)
            where[0] = "edits"
            decision = routed.decision
            if decision is None:  # already classified by a trusted gateway: unchanged
                log.set(recipients=len(msg.rcpt_tos))
                self._done(log, replies.OK)
                return MessageEdits(verdict="pass-through")
            self._log_decision(decision, log)
            edits = message_edits(msg, routed.ctx, decision, self._headers(routed.ctx, decision))
            if edits.discard:
                self._discarded(msg, decision)
            recipients = msg.rcpt_tos if edits.recipients is None else edits.recipients
            log.set(recipients=0 if edits.discard else len(recipients))
            self._done(log, edits.reply or replies.OK)
            return edits
        except Exception as exc:
            self._failed(msg, where[0], exc, "milter")
            raise

    def _failed(self, msg: InboundMessage, stage: str, exc: Exception, front: str) -> None:
        if self.metrics is not None:
            self.metrics.message_failed(front)
        _log.error(
            "message_failed", queue_id=msg.queue_id, stage=stage, error_type=type(exc).__name__
        )

    async def _route(
        self, msg: InboundMessage, log: MessageLog, where: list[str]
    ) -> _Routed | Reply:
        """Everything up to the rules' decision (``where[0]``: the stage, for errors);
        a Reply when the message ends before the rules (loop, classifier defer)."""
        rules = self.rules  # taken once: a reload does not change a message in flight
        document: RawEmailDocument | None = None
        where[0] = "prepare"
        content = msg.content
        if not msg.trusted_peer:
            content = await off_loop(content, lambda c: strip_headers(c, HEADER_PREFIX))
        hops = await off_loop(content, count_hops)
        if hops > self.config.smtp.max_hops:
            log.set(status="not-processed", hops=hops)
            return replies.LOOP_DETECTED
        where[0] = "parse"
        status, parsed = await self._parse(msg, content, log)
        ctx = message_context(
            parsed,
            mail_from=msg.mail_from,
            rcpt_tos=msg.rcpt_tos,
            prediction=None,
            status=status,
            model_version=None,
        )
        if status.classified:
            reason = skip_reason(self.config, ctx)
            if reason is not None:
                ctx = dataclasses.replace(ctx, status=ClassificationStatus("skipped", reason))
        if ctx.status.classified:
            where[0] = "classify"
            outcome = await classify_one(
                self.classifier, self.config, self._classify_deadline, parsed, content, ctx, log
            )
            if isinstance(outcome, Reply):
                return outcome
            ctx, document = outcome
        log.set(
            message_id=ctx.message_id,
            status=ctx.status.header_value,
            labels=labels_brief(ctx.prediction),
            model=ctx.model_version,
        )
        if ctx.status.reason == ALREADY_CLASSIFIED:
            # Classified and routed by the gateway before us (a trusted peer): its
            # headers stand and its routing is final. Evaluating rules again would
            # see an unclassified message and could re-route it (the shipped triage
            # rules send unclassified mail to review@).
            log.set(verdict="pass-through")
            return _Routed(content, ctx, None)
        where[0] = "rules"
        with log.stage("rules"):
            decision = rules.evaluate(ctx, default_threshold=self._threshold)
        if self.shadow is not None and document is not None:
            # A background task: the reply never waits for the shadow model.
            self.shadow.submit(document, ctx, decision, rules, msg.queue_id)
        return _Routed(content, ctx, decision)

    async def _parse(
        self, msg: InboundMessage, content: bytes, log: MessageLog
    ) -> tuple[ClassificationStatus, ParsedMessage]:
        with log.stage("parse"):
            if msg.trusted_peer and any(
                name.lower() == f"{HEADER_PREFIX}status".lower()
                for name, _ in await off_loop(content, header_fields)
            ):
                skipped = ClassificationStatus("skipped", ALREADY_CLASSIFIED)
                return skipped, await off_loop(content, light_parse)
            if len(content) > self.config.classifier.classify_max_size:
                # skip_reason() names it (after bounce / auto-submitted, in that order).
                return CLASSIFIED, await off_loop(content, light_parse)
            if len(content) > PARSE_IN_THREAD:
                return CLASSIFIED, await asyncio.to_thread(parse_message, content)
            return CLASSIFIED, parse_message(content)

    def _headers(self, ctx: MessageContext, decision: Decision) -> list[tuple[str, str]]:
        headers = gateway_headers(ctx, decision)
        if decision.audit:
            headers = [(n, v) for n, v in headers if n.lower() in _CLASSIFICATION_HEADERS]
        return headers

    async def _apply(
        self,
        msg: InboundMessage,
        content: bytes,
        ctx: MessageContext,
        decision: Decision,
        log: MessageLog,
    ) -> Reply:
        enforce = not decision.audit
        self._log_decision(decision, log)
        if enforce and decision.verdict in ("reject", "defer") and decision.reply is not None:
            return self._done(log, decision.reply)
        recipients = decision.recipients if enforce else msg.rcpt_tos
        if enforce and (decision.verdict == "discard" or not recipients):
            self._discarded(msg, decision)
            log.set(recipients=0)
            return self._done(log, replies.queued(msg.queue_id))
        outgoing = content
        if enforce:
            for prefix in reversed(decision.subject_prefixes):
                edit = functools.partial(prefix_subject, prefix=prefix)
                outgoing = await off_loop(outgoing, edit)
        return await self._relay(msg, outgoing, recipients, log, self._headers(ctx, decision))

    @staticmethod
    def _log_decision(decision: Decision, log: MessageLog) -> None:
        enforce = not decision.audit
        log.set(
            rules_hit=list(decision.rules_hit),
            verdict=decision.verdict if enforce else "deliver",
        )
        if decision.audit and decision.audit_verdict is not None:
            log.set(audit_verdict=decision.audit_verdict)
        if decision.matches and any(m.audit for m in decision.matches):
            log.set(audit_rules=[m.rule for m in decision.matches if m.audit])

    @staticmethod
    def _discarded(msg: InboundMessage, decision: Decision) -> None:
        # Loud on purpose: a discarded message is acknowledged and reaches nobody.
        _log.warning(
            "message_discarded",
            queue_id=msg.queue_id,
            rules_hit=list(decision.rules_hit),
            reason="discard" if decision.verdict == "discard" else "no recipients",
        )

    async def _relay(
        self,
        msg: InboundMessage,
        content: bytes,
        recipients: Sequence[str],
        log: MessageLog,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Reply:
        # One prepend (one copy of a possibly large message): our trace field on top.
        received = ("Received", received_header(msg, self.config.smtp.hostname))
        outgoing = await off_loop(content, lambda c: prepend_headers(c, [received, *headers]))
        log.set(recipients=len(recipients))
        with log.stage("relay"):
            result = await self.delivery.deliver(
                msg.mail_from,
                recipients,
                outgoing,
                smtp_utf8=msg.smtp_utf8,
                xforward=msg.next_hop_xforward(),
                crlf_only=True,
            )
        log.next_hop(result.next_hop, result.queue_id)
        if result.error:
            log.set(relay_error=result.error)
        if result.refused:
            log.set(refused=len(result.refused))
        if result.delivered:
            return self._done(log, replies.queued(msg.queue_id))
        return self._done(log, result.reply)

    @staticmethod
    def _done(log: MessageLog, reply: Reply) -> Reply:
        log.emit(reply)
        return reply
