"""Helpers for the pipeline tests: configs in tmp_path, inbound messages, fake classifiers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.config import Config, build_config
from gateway.documents import RawEmailDocument
from gateway.pipeline import InboundMessage
from gateway.predictions import DocumentPrediction, Label, ModelInfo, PredictionBatch

__all__ = ["RULES", "THREAD_RULES", "FixedClassifier", "inbound", "mail", "make_config"]

RULES = """
rules:
  - name: invoices-to-ap
    when: { label: "Finance > Invoice", min_probability: 0.5 }
    actions:
      - add_header: { X-Triage-Queue: accounts-payable }
      - redirect: [ap@example.com]
    stop: true
  - name: contracts-rejected
    when: { label: "Legal > Contract" }
    actions:
      - reject: "Contracts go through the legal portal"
  - name: leave-deferred
    when: { label: "HR > Leave Request" }
    actions:
      - defer: "HR system maintenance"
  - name: newsletters-dropped
    when: { label: "Notification > Newsletter" }
    actions:
      - discard: true
  - name: card-data-quarantined
    when: { label: "Compliance > Payment Card Data" }
    actions:
      - quarantine: quarantine@example.com
  - name: complaints
    when: { label: "Customer Service > Complaint" }
    actions:
      - prefix_subject: "[Complaint] "
      - bcc: [quality@example.com]
      - add_header: { X-Top: "{top_label}" }
  - name: unclassified-flag
    when: { unclassified: true }
    actions:
      - add_header: { X-Needs-Review: "yes" }
"""

# A reply to an invoice (a "finance" message) is marked by the thread rule.
THREAD_RULES = """\
rules:
  - name: finance
    when: { label: "Finance > Invoice" }
    actions:
      - add_header: { X-Queue: finance }
  - name: follows-finance
    when: { thread: { matched: finance } }
    actions:
      - add_header: { X-Thread: finance }
"""


def make_config(
    tmp_path: Path,
    *,
    downstream: str,
    rules_yaml: str = RULES,
    classifier: dict[str, Any] | None = None,
    downstream_routes: dict[str, dict[str, Any]] | None = None,
    **sections: dict[str, Any],
) -> Config:
    """A Config whose rule file lives in ``tmp_path``; emulator classifier by default."""
    (tmp_path / "rules.yaml").write_text(rules_yaml, encoding="utf-8")
    data: dict[str, Any] = {
        "smtp": {"hostname": "gw.test"},
        "downstream": {"url": downstream, "timeout": 5, "routes": downstream_routes or {}},
        "classifier": classifier or {"provider": "emulator"},
        "rules": {"files": ["rules.yaml"]},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return build_config(data, file=str(tmp_path / "gateway.toml"), env={})


def mail(
    subject: str = "Hello",
    body: str = "Just saying hello.",
    *,
    headers: Sequence[tuple[str, str]] = (),
    sender: str = "alice@example.com",
) -> bytes:
    """A small CRLF message; extra ``headers`` go on top."""
    lines = [f"{n}: {v}" for n, v in headers]
    lines += [
        f"From: Alice <{sender}>",
        "To: Support <support@example.com>",
        f"Subject: {subject}",
        "Message-ID: <m1@example.com>",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        body,
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def inbound(
    content: bytes,
    *,
    mail_from: str = "alice@example.com",
    rcpt_tos: Sequence[str] = ("support@example.com",),
    trusted: bool = True,
    smtp_utf8: bool = False,
    queue_id: str = "4QTEST1",
) -> InboundMessage:
    """An InboundMessage as the SMTP front would hand it over."""
    return InboundMessage(
        mail_from=mail_from,
        rcpt_tos=tuple(rcpt_tos),
        content=content,
        peer_ip="127.0.0.1" if trusted else "203.0.113.9",
        helo="client.example.com",
        smtp_utf8=smtp_utf8,
        mail_options=(),
        tls=False,
        authenticated_user=None,
        trusted_peer=trusted,
        queue_id=queue_id,
        received_at=time.time(),
    )


class FixedClassifier:
    """A Classifier that answers every document with the same labels.

    Used only where the real API cannot be made to answer something (a label name with
    CR/LF), or to prove an unexpected error propagates."""

    def __init__(
        self, labels: Sequence[tuple[tuple[str, ...], float]] = (), error: Exception | None = None
    ) -> None:
        self.labels = labels
        self.error = error
        self.calls = 0

    @property
    def description(self) -> str:
        return "fixed test classifier"

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        self.calls += 1
        if self.error is not None:
            raise self.error
        prediction = DocumentPrediction(
            labels=tuple(Label(name=name, probability=p) for name, p in self.labels)
        )
        return PredictionBatch(
            predictions=tuple(prediction for _ in documents), model=ModelInfo(version=7)
        )

    async def aclose(self) -> None:
        return None
