"""``cm-gateway explain FILE.eml [--config] [--predictions JSON] [--rules FILE...] [--json]``.

Shows what the gateway would do with one message, sending nothing: the payload summary
(never the body: a preview of at most 200 characters), the predictions (from the file
given, else from the configured classifier), every rule's verdict and why, the decision,
and the exact header lines and envelope recipients that would result. ``--json`` prints
the same as one JSON object. A file has no envelope: the From address is taken as the
sender and the To/Cc addresses as the recipients, and the output says so.

Exit status: 0 whatever the decision; 2 when the config, a rule file, the message or the
predictions file cannot be read (``ConfigError``). A classifier failure is explained as
the gateway would handle it (``classifier.on_error``), exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from gateway.config import Config, load_config
from gateway.context import MessageContext
from gateway.documents import RawEmailDocument
from gateway.errors import ClassifierError, ConfigError
from gateway.logsetup import configure_logging
from gateway.mail import (
    ParsedMessage,
    apply_subject_prefixes,
    build_document,
    safe_header_value,
)
from gateway.pipeline import (
    GivenPredictions,
    Prepared,
    classify_message,
    defers,
    gateway_headers,
    load_predictions_file,
    prepare_message,
)
from gateway.predictions import DocumentPrediction
from gateway.replies import CLASSIFIER_DEFER
from gateway.rules import Decision, RuleSet, load_rules

from ._sources import SourceMessage, iter_messages

__all__ = ["explain_message", "render_text", "run"]

PREVIEW_CHARS = 200
_CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
_TAGS = re.compile(r"<[^>]*>")
_SPACES = re.compile(r"\s+")


def _mask_digits(match: re.Match[str]) -> str:
    text = match.group(0)
    digits = sum(c.isdigit() for c in text)
    out, seen = [], 0
    for c in text:
        if c.isdigit():
            seen += 1
            out.append(c if seen > digits - 4 else "*")
        else:
            out.append(c)
    return "".join(out)


def _mask(text: str) -> str:
    """Card-like digit runs keep their last four digits only (explain output is shared)."""
    return _CARD.sub(_mask_digits, text)


def _preview(parsed: ParsedMessage) -> str:
    """At most 200 characters of the text, white space collapsed, card numbers masked."""
    text = parsed.text_plain or _TAGS.sub(" ", parsed.text_html or "")
    text = _SPACES.sub(" ", text).strip()
    if len(text) > PREVIEW_CHARS:
        text = text[: PREVIEW_CHARS - 1].rstrip() + "…"
    return _mask(text)


def _payload(path: str, parsed: ParsedMessage, document: RawEmailDocument) -> dict[str, Any]:
    return {
        "file": path,
        "size": parsed.size,
        "header_count": len(parsed.headers),
        "subject": parsed.subject,
        "message_id": parsed.message_id,
        "from": list(parsed.from_addresses),
        "to": list(parsed.to_addresses),
        "body": {
            "plain_chars": None if parsed.text_plain is None else len(parsed.text_plain),
            "html_chars": None if parsed.text_html is None else len(parsed.text_html),
        },
        "attachments": [
            {"name": a.name, "content_type": a.content_type, "size": a.size}
            for a in parsed.attachments
        ],
        "user_properties": dict(document.get("user_properties") or {}),
        "defects": list(parsed.defects),
        "preview": _preview(parsed),
    }


async def _classify(
    config: Config, prepared: Prepared
) -> tuple[str, MessageContext, ClassifierError | None]:
    from gateway.classify import make_classifier

    classifier = make_classifier(config)
    try:
        ctx, error = await classify_message(
            classifier, prepared, deadline=config.classifier.deadline
        )
    finally:
        await classifier.aclose()
    return classifier.description, ctx, error


def _prediction_json(prediction: DocumentPrediction | None) -> dict[str, Any] | None:
    if prediction is None:
        return None
    ordered = sorted(prediction.labels, key=lambda lb: (-lb.probability, lb.name))
    return {
        "labels": [{"name": lb.full_name, "probability": lb.probability} for lb in ordered],
        "entities": [
            {"kind": e.entity_kind, "value": _mask(e.formatted_value)} for e in prediction.entities
        ],
        "sentiment": prediction.sentiment,
        "label_properties": {p.property_name: p.value for p in prediction.label_properties},
    }


def _rules_json(ruleset: RuleSet, decision: Decision) -> list[dict[str, Any]]:
    matches = {m.rule: m for m in decision.matches}
    out = []
    for rule, verdict in zip(ruleset.rules, decision.verdicts, strict=True):
        if verdict.skipped == "disabled":
            result = "disabled"
        elif verdict.skipped is not None:
            result = "skipped (after stop)"
        else:
            result = "matched" if verdict.matched else "not matched"
        match = matches.get(rule.name)
        out.append(
            {
                "rule": rule.name,
                "source": rule.source,
                "result": result,
                "why": _mask(verdict.why),
                "audit": bool(match and match.audit),
                "actions": [_mask(a) for a in match.actions] if match else [],
                "stop": rule.stop,
            }
        )
    return out


def explain_message(
    config: Config,
    path: str,
    raw: bytes,
    ruleset: RuleSet,
    *,
    predictions_file: str | None = None,
    given: GivenPredictions | None = None,
    envelope: tuple[str | None, tuple[str, ...] | None] = (None, None),
    at: datetime | None = None,
    thread_matched: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Everything ``explain`` shows, as one JSON-ready mapping. ``given`` predictions
    (``rules test``) replace the classifier; ``envelope`` parts replace the assumed ones;
    ``at`` is the time the rules see; ``thread_matched`` what earlier messages of the
    conversation matched."""
    assumed = envelope == (None, None)
    prepared = prepare_message(config, raw, mail_from=envelope[0], rcpt_tos=envelope[1])
    parsed = prepared.parsed
    ctx = dataclasses.replace(prepared.ctx, at=at, thread_matched=thread_matched)
    prepared = dataclasses.replace(prepared, ctx=ctx)
    # Shown even when the gateway would not send it: what the classifier would read.
    document = prepared.document or build_document(
        parsed, raw, user_properties=config.classifier.user_properties
    )
    error: ClassifierError | None = None
    if given is not None or predictions_file is not None:
        if given is not None:
            source = "given"
        else:
            assert predictions_file is not None
            given = load_predictions_file(predictions_file)
            source = f"file {predictions_file}"
        ctx = dataclasses.replace(
            ctx,
            prediction=given.prediction if given.status.classified else None,
            status=given.status,
            model_version=given.model_version,
        )
    elif prepared.document is None:
        source = "not classified (the gateway would skip it)"
    else:
        source, ctx, error = asyncio.run(_classify(config, prepared))
    decision = ruleset.evaluate(ctx, default_threshold=config.classifier.default_threshold)
    verdict: str = decision.verdict
    reply = decision.reply
    deferred = defers(config, error)
    if deferred:
        verdict, reply = "defer", CLASSIFIER_DEFER
    headers = [(n, safe_header_value(v, name=n)) for n, v in gateway_headers(ctx, decision)]
    prefixes = () if decision.audit else decision.subject_prefixes
    return {
        "payload": _payload(path, parsed, document),
        "classification": {
            "source": source,
            "status": ctx.status.header_value,
            "error": f"{error.kind}: {error}" if error else None,
            "model_version": ctx.model_version,
            "prediction": _prediction_json(ctx.prediction),
        },
        "rules": {
            "files": list(ruleset.files),
            "mode": ruleset.mode,
            "default_threshold": config.classifier.default_threshold,
            "at": at.isoformat() if at is not None else None,
            "thread_matched": sorted(thread_matched),
            "verdicts": _rules_json(ruleset, decision),
        },
        "envelope": {
            "assumed": assumed,
            "note": "a file has no envelope: sender = first From address,"
            " recipients = To and Cc addresses",
            "mail_from": ctx.mail_from,
            "rcpt_tos": list(ctx.rcpt_tos),
        },
        "decision": {
            "verdict": verdict,
            "reply": str(reply) if reply else None,
            "on_error_defer": deferred,
            "recipients": list(ctx.rcpt_tos if decision.audit else decision.recipients),
            "quarantine_address": decision.quarantine_address,
            "route": None if decision.audit else decision.route,
            "rules_hit": list(decision.rules_hit),
            "audit": decision.audit,
            "audit_verdict": decision.audit_verdict,
            "subject": apply_subject_prefixes(parsed.subject, prefixes),
            "subject_prefixes": list(prefixes),
            "headers": [[n, v] for n, v in headers],
            "removed_headers": [] if decision.audit else list(decision.remove_headers),
        },
    }


def _line(out: list[str], label: str, value: object) -> None:
    out.append(f"  {label:<17}{value}")


def render_text(report: dict[str, Any]) -> str:
    """The report as plain, uncoloured text."""
    p, c, r, e, d = (
        report[k] for k in ("payload", "classification", "rules", "envelope", "decision")
    )
    out = [f"Message {p['file']}"]
    _line(out, "size", f"{p['size']} bytes, {p['header_count']} headers")
    _line(out, "subject", p["subject"] or "(none)")
    _line(out, "message-id", p["message_id"] or "(none)")
    _line(out, "from", ", ".join(p["from"]) or "(none)")
    _line(out, "to", ", ".join(p["to"]) or "(none)")
    body = p["body"]
    sizes = [
        f"{kind} {'none' if body[key] is None else str(body[key]) + ' chars'}"
        for kind, key in (("text/plain", "plain_chars"), ("text/html", "html_chars"))
    ]
    _line(out, "body", ", ".join(sizes))
    atts = [f"{a['name']} ({a['content_type']}, {a['size']} bytes)" for a in p["attachments"]]
    _line(out, "attachments", "; ".join(atts) or "none")
    props = [f"{k}={v}" for k, v in p["user_properties"].items()]
    _line(out, "user properties", ", ".join(props) or "none")
    if p["defects"]:
        _line(out, "defects", ", ".join(p["defects"]))
    _line(out, "preview", json.dumps(p["preview"], ensure_ascii=False))

    out += ["", f"Predictions ({c['source']})"]
    _line(out, "status", c["status"] + (f" ({c['error']})" if c["error"] else ""))
    if c["model_version"] is not None:
        _line(out, "model version", c["model_version"])
    pred = c["prediction"]
    if pred is not None:
        labels = [f"{lb['name']} ({lb['probability']:.2f})" for lb in pred["labels"]]
        _line(out, "labels", ", ".join(labels) or "none")
        ents = [f"{x['kind']} {x['value']!r}" for x in pred["entities"]]
        _line(out, "entities", ", ".join(ents) or "none")
        sentiment = pred["sentiment"]
        _line(out, "sentiment", "none" if sentiment is None else f"{sentiment:.2f}")
        lps = [f"{k} {v:.2f}" for k, v in pred["label_properties"].items()]
        _line(out, "label properties", ", ".join(lps) or "none")

    out += [
        "",
        f"Rules ({', '.join(r['files'])}; mode {r['mode']};"
        f" default threshold {r['default_threshold']:g})",
    ]
    if r["at"]:
        out.append(f"  at {r['at']}")
    if r["thread_matched"]:
        out.append(f"  this thread earlier matched: {', '.join(r['thread_matched'])}")
    width = max((len(v["rule"]) for v in r["verdicts"]), default=0)
    for i, v in enumerate(r["verdicts"], 1):
        tag = v["result"] + (" [audit: changes nothing]" if v["audit"] else "")
        out.append(f"  {i:>2}. {v['rule']:<{width}}  {tag}")
        out.append(f"      why: {v['why']}")
        if v["actions"]:
            stop = "; stop" if v["stop"] else ""
            out.append(f"      actions: {'; '.join(v['actions'])}{stop}")

    out += ["", "Decision"]
    _line(out, "verdict", d["verdict"] + (f" ({d['reply']})" if d["reply"] else ""))
    if d["on_error_defer"]:
        _line(out, "", "classifier failed and classifier.on_error = defer: the sender retries")
    if d["audit"]:
        _line(out, "", f"audit mode: nothing changes (would be: {d['audit_verdict'] or 'deliver'})")
    _line(out, "rules hit", ", ".join(d["rules_hit"]) or "none")
    how = (" (assumed: first From address)", " (assumed: To and Cc)") if e["assumed"] else ("", "")
    _line(out, "envelope from", f"{e['mail_from'] or '<>'}{how[0]}")
    _line(out, "envelope to", f"{', '.join(e['rcpt_tos']) or '(none)'}{how[1]}")
    _line(out, "recipients", ", ".join(d["recipients"]) or "(none)")
    if d["quarantine_address"]:
        _line(out, "quarantine", d["quarantine_address"])
    if d.get("route"):
        _line(out, "route", f"{d['route']} ([downstream.routes.{d['route']}])")
    if d["subject_prefixes"]:
        _line(out, "subject", d["subject"])
    if d["removed_headers"]:
        _line(out, "headers removed", ", ".join(d["removed_headers"]))
    out.append("  headers prepended (below the gateway's Received line):")
    for name, value in d["headers"]:
        out.append("    " + f"{name}: {value}".replace("\r\n", "\n    "))
    return "\n".join(out) + "\n"


def _one_message(file: str) -> bytes:
    """The message in ``file``; an mbox of one message gives that message. A file of
    several messages is refused (ConfigError, exit 2): explained as one message, a whole
    mailbox would be classified (and billed) as one 7 MB document."""
    try:
        raw = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", file=file) from None
    if not raw.startswith(b"From "):
        return raw
    found: list[SourceMessage] = []
    for item in iter_messages([file]):
        if isinstance(item, SourceMessage):
            found.append(item)
        if len(found) > 1:
            raise ConfigError(
                "holds several messages (an mbox): explain takes one message;"
                " use `cm-gateway classify FILE` for a mailbox",
                file=file,
            )
    return found[0].raw if found else raw


def run(args: argparse.Namespace) -> int:
    """``cm-gateway explain``: see the module docstring."""
    config = load_config(args.config)
    # Logs go to stderr, and only warnings: stdout is the report (and may be JSON).
    configure_logging("warning", config.log.format)
    raw = _one_message(args.file)
    paths = [Path(p) for p in args.rules] if args.rules else config.rule_paths()
    ruleset = load_rules(paths, mode=config.rules.mode, routes=config.downstream.routes)
    report = explain_message(
        config,
        args.file,
        raw,
        ruleset,
        predictions_file=args.predictions,
        at=args.at,
        thread_matched=frozenset(args.thread_matched or ()),
    )
    if args.json:
        json.dump(report, sys.stdout, ensure_ascii=False, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
