"""The result of evaluating a rule set against one message.

Precedence (fixed): reject > defer > discard > hold > quarantine > redirect > bcc /
add_header / prefix_subject. ``Decision.verdict`` is the strongest action any enforced
rule asked for.

- reject / defer: the first such rule's text is the reply;
- quarantine: recipients become the quarantine address only (redirects and bccs are
  dropped so that a quarantined message reaches nobody else), ``X-CM-Quarantine: <rule>``
  is added; a later quarantine replaces an earlier one;
- hold: the message goes to the MTA's hold queue with every other edit applied (headers,
  recipients): released, it goes where it would have gone; the first hold's reason is kept;
- redirect: a later redirect replaces an earlier one;
- bcc: added to the recipients (original or redirected), deduplicated case-insensitively;
- route: the whole message (whatever its recipients) goes through that named next hop
  instead of ``[downstream]``; a later route replaces an earlier one.

Headers and subject prefixes are kept for every verdict; for reject/defer/discard the
delivery fields say what delivery would have been, and the pipeline ignores them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

from gateway.replies import Reply

from ._actions import Draft

__all__ = ["Decision", "RuleMatch", "RuleVerdict", "Verdict", "finalize"]

Verdict = Literal["deliver", "reject", "defer", "discard", "hold", "quarantine"]


class RuleVerdict(NamedTuple):
    """One rule's outcome, for ``explain``: ``skipped`` is ``"disabled"``,
    ``"after stop"`` or None (evaluated); ``why`` says why it matched or did not."""

    rule: str
    matched: bool
    skipped: str | None
    why: str


class RuleMatch(NamedTuple):
    """A rule whose condition held.

    ``audit`` rules are recorded with the actions they would have taken, which changed
    nothing. ``actions`` are the effects, placeholders expanded (``redirect -> ap@x``)."""

    rule: str
    audit: bool
    why: str
    actions: tuple[str, ...] = ()
    stop: bool = False
    source: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one message. See the module docstring for the precedence.

    ``add_headers`` values have their placeholders expanded but are NOT sanitized (they
    may carry text from the API). ``subject_prefixes`` are in rule order; apply them with
    ``apply_subject_prefixes`` (idempotent). ``rules_hit``: enforced rules that matched,
    in order (the ``X-CM-Rules`` header). ``audit``: the rule set runs in audit mode as
    a whole (nothing it decides may change a message). ``audit_verdict``: the verdict had
    the audited rules that matched been enforced, or None when none matched.
    ``verdicts``: every rule's outcome, in order. ``remove_headers``: field names
    (any case) whose every instance is removed from the message as it arrived. ``hold``:
    the reason to hold the message in the MTA's hold queue (``<rule>: <text>``), None =
    no hold. ``route``: the ``[downstream.routes]`` name to deliver through, None = the
    default next hop."""

    verdict: Verdict
    reply: Reply | None
    recipients: tuple[str, ...]
    add_headers: tuple[tuple[str, str], ...] = ()
    subject_prefixes: tuple[str, ...] = ()
    quarantine_address: str | None = None
    matches: tuple[RuleMatch, ...] = ()
    rules_hit: tuple[str, ...] = ()
    audit: bool = False
    verdicts: tuple[RuleVerdict, ...] = ()
    audit_verdict: Verdict | None = None
    remove_headers: tuple[str, ...] = ()
    route: str | None = None
    hold: str | None = None


def dedupe_addresses(addresses: Iterable[str]) -> tuple[str, ...]:
    """First spelling of each address, compared case-insensitively, in order."""
    seen: set[str] = set()
    out: list[str] = []
    for address in addresses:
        key = address.lower()
        if key not in seen:
            seen.add(key)
            out.append(address)
    return tuple(out)


def _dedupe_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    seen: set[tuple[str, str]] = set()
    out = []
    for name, value in headers:
        key = (name.lower(), value)
        if key not in seen:
            seen.add(key)
            out.append((name, value))
    return tuple(out)


class Outcome(NamedTuple):
    verdict: Verdict
    reply: Reply | None
    recipients: tuple[str, ...]
    add_headers: tuple[tuple[str, str], ...]
    subject_prefixes: tuple[str, ...]
    quarantine_address: str | None
    remove_headers: tuple[str, ...]
    route: str | None = None
    hold: str | None = None


def finalize(draft: Draft, original: tuple[str, ...]) -> Outcome:
    """Apply the precedence to what the rules asked for."""
    headers = list(draft.headers)
    quarantine_address = None
    if draft.quarantine is not None:
        quarantine_address, quarantine_headers = draft.quarantine
        headers.extend(quarantine_headers)
        recipients: tuple[str, ...] = (quarantine_address,)
    else:
        # The original envelope is kept as it came (even with a repeated recipient), so
        # that a decision without recipient actions changes nothing.
        base = dedupe_addresses(draft.redirect) if draft.redirect is not None else original
        known = {a.lower() for a in base}
        recipients = base + tuple(a for a in dedupe_addresses(draft.bcc) if a.lower() not in known)
    verdict: Verdict = "deliver"
    reply = None
    if draft.reject is not None:
        verdict, reply = "reject", draft.reject
    elif draft.defer is not None:
        verdict, reply = "defer", draft.defer
    elif draft.discard:
        verdict = "discard"
    elif draft.hold is not None:
        verdict = "hold"
    elif quarantine_address is not None:
        verdict = "quarantine"
    return Outcome(
        verdict,
        reply,
        recipients,
        _dedupe_headers(headers),
        tuple(draft.prefixes),
        quarantine_address,
        tuple(draft.removed),
        draft.route,
        draft.hold,
    )
