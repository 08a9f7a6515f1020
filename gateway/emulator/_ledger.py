"""The billing ledger: what a tenant would pay for, and what the emulator was asked."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Ledger"]


@dataclass
class Ledger:
    """Counters behind ``GET /_emulator/stats``.

    ``documents_billed`` counts the documents of ``predict`` and ``predict-raw-emails``
    calls that got a genuine 200 (1 AI unit each, as the API bills); errors and injected
    faults (``malformed`` included) are never billed. ``documents_by_comment_id`` counts
    billed raw-email documents per ``comment_id`` (or Message-ID, or body hash when both
    are absent): a value above 1 means the same message was paid for twice.
    """

    documents_billed: int = 0
    requests: int = 0
    requests_by_route: Counter[str] = field(default_factory=Counter)
    # By the model version as the URL names it ("live", "staging", "8").
    requests_by_version: Counter[str] = field(default_factory=Counter)
    responses_by_status: Counter[str] = field(default_factory=Counter)
    faults_injected: int = 0
    faults_by_kind: Counter[str] = field(default_factory=Counter)
    documents_by_comment_id: Counter[str] = field(default_factory=Counter)

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

    def bill(self, documents: int, comment_keys: Iterable[str] = ()) -> None:
        self.documents_billed += documents
        for key in comment_keys:
            self.documents_by_comment_id[key] += 1

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def to_json(self) -> dict[str, Any]:
        return {
            "documents_billed": self.documents_billed,
            "requests": self.requests,
            "requests_by_route": dict(self.requests_by_route),
            "requests_by_version": dict(self.requests_by_version),
            "responses_by_status": dict(self.responses_by_status),
            "faults_injected": self.faults_injected,
            "faults_by_kind": dict(self.faults_by_kind),
            "documents_by_comment_id": dict(self.documents_by_comment_id),
        }
