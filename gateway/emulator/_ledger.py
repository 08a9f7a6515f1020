"""The billing ledger: what a tenant would pay for, and what the emulator was asked."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ledger", "text_digest"]


def text_digest(texts: Iterable[str]) -> str:
    """What "its text was modified" compares: a digest of the comment's texts, in order."""
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\x00")
    return digest.hexdigest()[:32]


@dataclass
class Ledger:
    """Counters behind ``GET /_emulator/stats``: API load and cost, kept apart.

    * ``documents_sent``: the documents of every ``predict``/``predict-raw-emails`` call
      that reached the emulator, failed and faulted calls included (the API's load).
    * ``documents_billed``: the documents of those calls that got a genuine 200; errors and
      injected faults (``malformed`` included) never count. ``documents_by_comment_id``
      counts them per ``comment_id`` (or Message-ID, or body hash when both are absent).
    * ``ai_units``: the cost, by the API's rule for ``predict-raw-emails``: "1 AI unit per
      created comment, or per updated comment (based on the email's Message ID) if its
      text was modified". A document whose comment id was answered before with the same
      text costs nothing, however often it is sent; ``predict`` costs 1 per document.
      ``ai_units_by_comment_id`` shows them per comment: a value above 1 means the text
      of that message changed between calls.
    """

    documents_sent: int = 0
    documents_billed: int = 0
    ai_units: int = 0
    requests: int = 0
    requests_by_route: Counter[str] = field(default_factory=Counter)
    # By the model version as the URL names it ("live", "staging", "8").
    requests_by_version: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[str] = field(default_factory=Counter)
    faults_injected: int = 0
    faults_by_kind: Counter[str] = field(default_factory=Counter)
    documents_by_comment_id: Counter[str] = field(default_factory=Counter)
    ai_units_by_comment_id: Counter[str] = field(default_factory=Counter)
    # comment id -> digest of the text last billed: the comments the tenant's dataset holds.
    _comments: dict[str, str] = field(default_factory=dict, repr=False)

    def request(self, route: str, version: str | None = None) -> None:
        self.requests += 1
        self.requests_by_route[route] += 1
        if version is not None:
            self.requests_by_version[version] += 1

    def response(self, status: int) -> None:
        self.responses_by_status[str(status)] += 1

    def fault(self, kind: str) -> None:
        self.faults_injected += 1
        self.faults_by_kind[kind] += 1

    def sent(self, documents: int) -> None:
        self.documents_sent += documents

    def bill(
        self,
        documents: int,
        comment_keys: Iterable[str] = (),
        digests: Iterable[str] | None = None,
    ) -> None:
        """A 200 for ``documents``; with ``digests`` (raw emails, one per key) the AI units
        follow the created-or-modified rule, else each document costs one unit."""
        self.documents_billed += documents
        keys = list(comment_keys)
        for key in keys:
            self.documents_by_comment_id[key] += 1
        if digests is None:
            self.ai_units += documents
            return
        for key, digest in zip(keys, digests, strict=True):
            if self._comments.get(key) != digest:
                self._comments[key] = digest
                self.ai_units += 1
                self.ai_units_by_comment_id[key] += 1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return {
            "documents_sent": self.documents_sent,
            "documents_billed": self.documents_billed,
            "ai_units": self.ai_units,
            "requests": self.requests,
            "requests_by_route": dict(self.requests_by_route),
            "requests_by_version": dict(self.requests_by_version),
            "responses_by_status": dict(self.responses_by_status),
            "faults_injected": self.faults_injected,
            "faults_by_kind": dict(self.faults_by_kind),
            "documents_by_comment_id": dict(self.documents_by_comment_id),
            "ai_units_by_comment_id": dict(self.ai_units_by_comment_id),
        }
