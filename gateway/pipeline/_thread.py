"""Conversation memory in the pipeline: before the rules run, what earlier messages of
the thread matched (``MessageContext.thread_matched``); after, what this one matched.

A thread is named by the root of ``References`` (its first id, else ``In-Reply-To``)
and a message's parent (``In-Reply-To``, else the last ``References`` id); a message is
remembered under its own ``Message-ID`` and its thread's root, so that a reply to any
message of the conversation finds it. Only the rules some ``thread`` condition names
are remembered, and a rule set without such a condition costs nothing here. Hostile
headers cost bounded work: only the first ``References`` field is read, and only
``SCAN_CHARS`` at each end of it; an id longer than ``MAX_ID`` is ignored.
"""

from __future__ import annotations

import dataclasses
import re

from gateway.classify import ThreadMemory
from gateway.context import MessageContext
from gateway.rules import Decision, RuleSet

__all__ = ["ThreadStep", "thread_ids"]

SCAN_CHARS = 4096
MAX_ID = 998  # a header line's length: no real Message-ID is longer
_ID = re.compile(rf"<([^<>\s]{{1,{MAX_ID}}})>")


def _ids(value: str, *, last: bool) -> str | None:
    part = value[-SCAN_CHARS:] if last else value[:SCAN_CHARS]
    found = _ID.findall(part)
    if not found:
        return None
    return str(found[-1] if last else found[0])


def _own_id(ctx: MessageContext) -> str | None:
    value = (ctx.message_id or "").strip()
    found = _ID.search(value[:SCAN_CHARS]) if value.startswith("<") else None
    if found is not None:
        return found.group(1)
    return value if value and len(value) <= MAX_ID and "<" not in value else None


def thread_ids(ctx: MessageContext) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(ids to look the thread up by, ids to remember this message under)."""
    references = ctx.header_values("References")[:1]
    in_reply_to = ctx.header_values("In-Reply-To")[:1]
    first_ref = _ids(references[0], last=False) if references else None
    last_ref = _ids(references[0], last=True) if references else None
    parent = (_ids(in_reply_to[0], last=False) if in_reply_to else None) or last_ref
    root = first_ref or parent
    lookup = tuple(dict.fromkeys(i for i in (root, parent) if i))
    own = _own_id(ctx)
    record = tuple(dict.fromkeys(i for i in (own, root) if i))
    return lookup, record


class ThreadStep:
    """The two steps around ``RuleSet.evaluate``; ``memory`` None turns them off."""

    def __init__(self, memory: ThreadMemory | None) -> None:
        self.memory = memory

    async def recall(self, rules: RuleSet, ctx: MessageContext) -> MessageContext:
        """``ctx`` with the rules earlier messages of its thread matched."""
        if self.memory is None or not rules.thread_rules:
            return ctx
        lookup, _ = thread_ids(ctx)
        if not lookup:
            return ctx
        matched = await self.memory.recall(lookup)
        return dataclasses.replace(ctx, thread_matched=matched) if matched else ctx

    async def remember(self, rules: RuleSet, ctx: MessageContext, decision: Decision) -> None:
        """Remember the matched rules that some ``thread`` condition names."""
        if self.memory is None or not rules.thread_rules:
            return
        names = {m.rule for m in decision.matches} & rules.thread_rules
        _, record = thread_ids(ctx)
        if names and record:
            await self.memory.remember(record, names)

    async def aclose(self) -> None:
        """Release the memory's connections."""
        if self.memory is not None:
            await self.memory.aclose()
