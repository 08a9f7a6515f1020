"""Throughput of the emulator's keyword model and validator (run with scripts/bench)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.emulator import KeywordModel, validate_predict_raw_emails
from gateway.emulator._inputs import raw_email_docs
from gateway.emulator._model import Selection

pytestmark = pytest.mark.perf

TYPICAL = {
    "raw_email": {
        "headers": {"raw": "Subject: Refund for my order\r\nMessage-ID: <1@x>"},
        "body": {"plain": "Hi,\n\nwhere is my refund? Order ORD-123456.\n\nThanks, Jo\n" * 4},
        "attachments": [{"name": "receipt.pdf", "size": 1000, "content_type": "application/pdf"}],
    }
}


def test_a_full_batch_of_4096_typical_documents_validates_and_predicts() -> None:
    """4096 typical documents: validation and prediction figures, per document."""
    model = KeywordModel.default()
    body: dict[str, Any] = {"documents": [TYPICAL] * 4096, "transform_tag": "generic.0.CONVKER5"}
    started = time.perf_counter()
    validate_predict_raw_emails(body, known_labels=model.label_names)
    validated = time.perf_counter()
    payload = model.predict_texts(raw_email_docs(body), version=7, selection=Selection())
    done = time.perf_counter()
    per_doc_ms = (done - validated) / 4096 * 1000
    print(
        f"\nvalidate 4096 docs: {(validated - started) * 1000:.0f} ms;"
        f" predict: {(done - validated) * 1000:.0f} ms ({per_doc_ms:.2f} ms/doc)"
    )
    assert len(payload["predictions"]) == 4096
    assert per_doc_ms < 100  # far above the ~0.3 ms/doc of an idle 2-core machine
