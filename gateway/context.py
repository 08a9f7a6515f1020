"""What the rules see of one message, and the interface every classifier provides.

The SMTP path, ``classify`` and ``explain`` all build a ``MessageContext`` the same way,
so a rule behaves identically whether it runs live, in a dry run, or in a test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from gateway.documents import RawEmailDocument
from gateway.predictions import DocumentPrediction, PredictionBatch

__all__ = ["Attachment", "ClassificationStatus", "Classifier", "MessageContext"]


@dataclass(frozen=True, slots=True)
class Attachment:
    name: str
    content_type: str
    size: int


@dataclass(frozen=True, slots=True)
class ClassificationStatus:
    """How the classification went: ``classified``, ``unclassified`` or ``skipped``.

    ``reason`` is set for the last two (``timeout``, ``server-error``, ``bounce``...).
    It is written as ``X-CM-Status: <state>; reason=<reason>``.
    """

    state: str
    reason: str | None = None

    @property
    def header_value(self) -> str:
        return f"{self.state}; reason={self.reason}" if self.reason else self.state

    @property
    def classified(self) -> bool:
        return self.state == "classified"


CLASSIFIED = ClassificationStatus("classified")


@dataclass(frozen=True, slots=True)
class MessageContext:
    """One message as the rules engine sees it.

    ``headers`` holds (name, decoded value) pairs in message order, names as written.
    ``prediction`` is None when the message was not classified (see ``status``).
    ``at`` is the moment ``time`` conditions compare (None: when the rules run);
    ``thread_matched`` names the rules earlier messages of its conversation matched.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    size: int
    attachments: tuple[Attachment, ...] = ()
    prediction: DocumentPrediction | None = None
    status: ClassificationStatus = CLASSIFIED
    model_version: int | None = None
    message_id: str | None = None
    subject: str = ""
    at: datetime | None = None
    thread_matched: frozenset[str] = frozenset()

    def header_values(self, name: str) -> list[str]:
        """Every value of the header ``name`` (case-insensitive), in order."""
        lowered = name.lower()
        return [v for k, v in self.headers if k.lower() == lowered]


class Classifier(Protocol):
    """Anything that turns documents into predictions: the API client, the custom
    provider and the in-process emulator model all implement this."""

    @property
    def description(self) -> str:
        """One line for logs, e.g. ``communications-mining acme/inbox@live``."""
        ...

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        """One prediction per document, in order; raises ``ClassifierError``."""
        ...

    async def aclose(self) -> None: ...
