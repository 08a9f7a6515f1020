"""The message pipeline: what happens between the end of DATA and our reply.

    build_processor(config) -> Pipeline          Pipeline.process(msg) -> Reply

Per message (README "How it works", "What it writes into a message", "SMTP replies"):

1. From peers outside ``smtp.trusted_networks``, ``X-CM-*``, every header a loaded rule
   can add and ``smtp.strip_headers`` are removed: nobody can forge a verdict.
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
5. Rules -> ``Decision`` (seeing what the conversation's earlier messages matched,
   ``_thread``); reject/defer -> its reply; discard -> 250, nothing delivered.
6. Otherwise prepend ``Received`` and the ``X-CM-*`` / rule headers (through
   ``gateway.mail.safe_header_value``), remove headers and prefix the subject, deliver to
   ``Decision.recipients`` (via ``Decision.route`` if any), and answer ``250 ... queued
   as <our queue id>`` once the next hop has it, or its failure mapped by ``gateway.deliver``.

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
import functools
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from gateway import replies
from gateway.classify import ThreadMemory
from gateway.config import Config
from gateway.context import Classifier, MessageContext
from gateway.deliver import Delivery, NextHops
from gateway.errors import ConfigError
from gateway.logsetup import get_logger
from gateway.mail import (
    header_fields,
    prepend_headers,
    strip_headers,
)
from gateway.pipeline._shadow import ShadowRunner
from gateway.replies import Reply
from gateway.rules import Decision, RuleSet, load_rules

from ._big_message import HEAVY_PARSES, PARSE_IN_THREAD, off_loop, release_memory
from ._edits import message_edits
from ._inbound import InboundMessage, MessageEdits
from ._msglog import MessageLog, labels_brief, log_discarded
from ._prepare import (
    ALREADY_CLASSIFIED,
    HEADER_PREFIX,
    Prepared,
    classify_message,
    defers,
    gateway_headers,
    prepare_message,
)
from ._rewrite import rewrite_message
from ._thread import ThreadStep, remembered, settle
from ._trace import count_hops, received_header

if TYPE_CHECKING:
    from gateway.metrics import GatewayMetrics

__all__ = ["Pipeline"]


class _Routed(NamedTuple):
    """A message the rules decided on (``decision`` None: a trusted gateway did already),
    with the RuleSet that decided."""

    content: bytes
    ctx: MessageContext
    decision: Decision | None
    rules: RuleSet
    # The conversation memory being written: the reply waits for it (ThreadStep).
    remembering: asyncio.Future[None] | None = None


_CLASSIFICATION_HEADERS = {f"{HEADER_PREFIX}{n}".lower() for n in ("Labels", "Model", "Status")}

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
        threads: ThreadMemory | None = None,
        next_hops: NextHops | None = None,
    ) -> None:
        self.config = config
        self.threads = ThreadStep(threads)  # thread: {matched: RULE} conditions
        self.metrics = metrics
        self.classifier = classifier
        self.shadow = shadow
        self.rules = rules
        # Failed rule reloads since start (the old rules stayed): for monitoring.
        self.reload_failures = 0
        self.delivery = delivery  # the default of next_hops: [downstream]
        self.next_hops = next_hops if next_hops is not None else NextHops(delivery)
        self._threshold = config.classifier.default_threshold
        self._heavy_parses = asyncio.Semaphore(HEAVY_PARSES)
        self._heavy_waiting = 0

    def rule_paths(self) -> list[Path]:
        """The files whose change reloads the rules: the rule files and their lists."""
        return [*self.config.rule_paths(), *map(Path, self.rules.list_files)]

    def reload_rules(self, *, trigger: str = "sighup") -> bool:
        """Load the rule files again and swap them in; on an error keep the old rules,
        log ``rules_reload_failed`` (file, ``line:column``) and count it."""
        paths = self.config.rule_paths()
        try:
            rules = load_rules(paths, mode=self.config.rules.mode, routes=self.next_hops.routes)
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
            await self.threads.aclose()
        finally:
            await self.next_hops.aclose()

    async def process(self, msg: InboundMessage) -> Reply:
        """Classify, route and deliver one message; the reply to its DATA."""
        log = MessageLog(msg, self.metrics)
        where = ["start"]
        try:
            routed = await self._route(msg, log, where)
            if isinstance(routed, Reply):
                return self._done(log, routed)
            where[0] = "deliver"
            try:
                if routed.decision is None:
                    reply = await self._relay(msg, routed.content, msg.rcpt_tos, log)
                else:
                    reply = await self._apply(msg, routed.content, routed.ctx, routed.decision, log)
            finally:
                await remembered(routed.remembering)
            return self._done(log, reply)  # total_ms includes the wait for the memory
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
            try:
                edits = self._edits(msg, routed, decision, log)
            finally:
                await remembered(routed.remembering)
            self._done(log, edits.reply or replies.OK)
            return edits
        except Exception as exc:
            self._failed(msg, where[0], exc, "milter")
            raise

    def _edits(
        self, msg: InboundMessage, routed: _Routed, decision: Decision, log: MessageLog
    ) -> MessageEdits:
        log.decision(decision)
        headers = self._headers(routed.ctx, decision)
        edits = message_edits(msg, decision, headers, self._forged(routed.rules))
        if edits.discard:
            log_discarded(msg, decision)
        recipients = msg.rcpt_tos if edits.recipients is None else edits.recipients
        log.set(recipients=0 if edits.discard else len(recipients))
        return edits

    def _failed(self, msg: InboundMessage, stage: str, exc: Exception, front: str) -> None:
        if self.metrics is not None:
            self.metrics.message_failed(front)
        # Where it broke (file:line function of the innermost frame), never its text: an
        # exception's message may quote the mail.
        at = None
        if frames := traceback.extract_tb(exc.__traceback__, limit=-1):
            at = f"{Path(frames[0].filename).name}:{frames[0].lineno} {frames[0].name}"
        _log.error(
            "message_failed",
            queue_id=msg.queue_id,
            stage=stage,
            error_type=type(exc).__name__,
            at=at,
        )

    def _forged(self, rules: RuleSet) -> tuple[str, ...]:
        """Header names an untrusted peer may not set, besides X-CM-*: every header the
        rules can write (a reload brings a new RuleSet: the names follow) and
        ``smtp.strip_headers``."""
        return (*rules.header_names(), *self.config.smtp.strip_headers)

    async def _route(
        self, msg: InboundMessage, log: MessageLog, where: list[str]
    ) -> _Routed | Reply:
        """Everything up to the rules' decision (``where[0]``: the stage, for errors);
        a Reply when the message ends before the rules (loop, classifier defer)."""
        rules = self.rules  # taken once: a reload does not change a message in flight
        where[0] = "prepare"
        content = msg.content
        if not msg.trusted_peer:
            forged = self._forged(rules)
            content = await off_loop(content, lambda c: strip_headers(c, HEADER_PREFIX, forged))
        hops = await off_loop(content, count_hops)
        if hops > self.config.smtp.max_hops:
            log.set(status="not-processed", hops=hops)
            return replies.LOOP_DETECTED
        where[0] = "parse"
        prepared = await self._prepare(msg, content, log)
        if prepared.parsed.parts_skipped:
            log.set(mime_parts_skipped=prepared.parsed.parts_skipped)
        ctx = prepared.ctx
        # The thread's memory is looked up while the message is classified.
        recall = self.threads.start_recall(rules, ctx)
        try:
            if prepared.document is not None:
                where[0] = "classify"
                with log.stage("classify"):
                    # The classifier enforces classifier.timeout itself (retries included)
                    # and reports the last real error; the deadline is the backstop.
                    ctx, error = await classify_message(
                        self.classifier, prepared, deadline=self.config.classifier.deadline
                    )
                if error is not None:
                    log.set(classifier_error=error.kind)
                    if defers(self.config, error):
                        log.set(status=ctx.status.header_value)
                        return replies.CLASSIFIER_DEFER
            log.set(
                message_id=ctx.message_id,
                status=ctx.status.header_value,
                labels=labels_brief(ctx.prediction),
                model=ctx.model_version,
            )
            if ctx.status.reason == ALREADY_CLASSIFIED:
                # A trusted gateway before us classified and routed it: that stands (our
                # rules would see it unclassified and could send it to review@).
                log.set(verdict="pass-through")
                return _Routed(content, ctx, None, rules)
            where[0] = "rules"
            with log.stage("rules"):
                ctx = await self.threads.recalled(recall, ctx)
                decision = rules.evaluate(ctx, default_threshold=self._threshold)
                remembering = self.threads.start_remember(rules, ctx, decision)
            if self.shadow is not None and prepared.document is not None:
                # A background task: the reply never waits for the shadow model.
                self.shadow.submit(prepared.document, ctx, decision, rules, msg.queue_id)
            return _Routed(content, ctx, decision, rules, remembering)
        finally:
            await settle(recall)  # ended early (a defer, an error): no lookup left behind

    async def _prepare(self, msg: InboundMessage, content: bytes, log: MessageLog) -> Prepared:
        with log.stage("parse"):
            # A trusted peer's X-CM-Status: a gateway before us classified and routed it.
            already = msg.trusted_peer and any(
                name.lower() == f"{HEADER_PREFIX}status".lower()
                for name, _ in await off_loop(content, header_fields)
            )
            prepare = functools.partial(
                prepare_message,
                self.config,
                content,
                mail_from=msg.mail_from,
                rcpt_tos=msg.rcpt_tos,
                already_classified=already,
            )
            if len(content) <= PARSE_IN_THREAD:
                return prepare()
            self._heavy_waiting += 1
            try:
                async with self._heavy_parses:
                    return await asyncio.to_thread(prepare)
            finally:
                self._heavy_waiting -= 1
                if self._heavy_waiting == 0:  # the last big parse waiting or running ended
                    await asyncio.to_thread(release_memory)

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
        log.decision(decision)
        if enforce and decision.verdict in ("reject", "defer") and decision.reply is not None:
            return decision.reply
        recipients = decision.recipients if enforce else msg.rcpt_tos
        if enforce and (decision.verdict == "discard" or not recipients):
            log_discarded(msg, decision)
            log.set(recipients=0)
            return replies.queued(msg.queue_id)
        outgoing = await rewrite_message(content, decision) if enforce else content
        route = decision.route if enforce else None  # audit mode changes nothing
        headers = self._headers(ctx, decision)
        return await self._relay(msg, outgoing, recipients, log, headers, route)

    async def _relay(
        self,
        msg: InboundMessage,
        content: bytes,
        recipients: Sequence[str],
        log: MessageLog,
        headers: Sequence[tuple[str, str]] = (),
        route: str | None = None,
    ) -> Reply:
        if route is not None:
            log.set(next_hop_route=route)
        # One prepend (one copy of a possibly large message): our trace field on top.
        received = ("Received", received_header(msg, self.config.smtp.hostname))
        outgoing = await off_loop(content, lambda c: prepend_headers(c, [received, *headers]))
        log.set(recipients=len(recipients))
        with log.stage("relay"):
            result = await self.next_hops.pick(route).deliver(
                msg.mail_from,
                recipients,
                outgoing,
                smtp_utf8=msg.smtp_utf8,
                xforward=msg.next_hop_xforward(),
                crlf_only=True,
                original_rcpts=msg.rcpt_tos,
            )
        log.next_hop(result.next_hop, result.queue_id)
        if result.error:
            log.set(relay_error=result.error)
        if result.refused:
            log.set(refused=len(result.refused))
        return replies.queued(msg.queue_id) if result.delivered else result.reply

    @staticmethod
    def _done(log: MessageLog, reply: Reply) -> Reply:
        log.emit(reply)
        return reply
