"""The rules' edits of the message as it arrived: ``remove_header``, then
``prefix_subject``; every other byte stays as it came (DKIM signatures over untouched
fields stay valid)."""

from __future__ import annotations

import functools

from gateway.mail import prefix_subject, remove_headers
from gateway.rules import Decision

from ._big_message import off_loop

__all__ = ["rewrite_message"]


async def rewrite_message(content: bytes, decision: Decision) -> bytes:
    """``content`` with the decision's header removals and subject prefixes applied."""
    if decision.remove_headers:
        edit = functools.partial(remove_headers, names=decision.remove_headers)
        content = await off_loop(content, edit)
    for prefix in reversed(decision.subject_prefixes):
        content = await off_loop(content, functools.partial(prefix_subject, prefix=prefix))
    return content
