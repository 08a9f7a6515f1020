"""CPU of the shared batcher process per 20-document batch of ~4 KB mails, step by step
(run with ``-m perf -s``). Each bench prints the old way and the new way side by side,
medians of several runs, so that a figure in a commit message can be measured again."""

from __future__ import annotations

import hashlib
import json
import statistics
import timeit
from collections.abc import Callable
from functools import cache
from typing import Any

import httpx
import pytest

from gateway.canonical_json import canonical_json_slow
from gateway.client import json_body
from gateway.documents import RawEmailDocument
from gateway.emulator.inputs import raw_email_docs
from gateway.emulator.model import KeywordModel, Selection
from gateway.payload import build_document, document_hash, parse_message

from .loadgen import make_message

pytestmark = pytest.mark.perf

BATCH = 20


@cache
def documents() -> list[RawEmailDocument]:
    """The throughput benchmark's mails (4 KB), as the batcher receives them."""
    raws = [make_message("bench", i, 4096) for i in range(BATCH)]
    return [build_document(parse_message(raw), raw) for raw in raws]


@cache
def api_answer() -> bytes:
    """The emulator's predict-raw-emails body for ``documents()``."""
    model = KeywordModel.default()
    request = {"documents": documents()}
    answer = model.predict_texts(
        raw_email_docs(request),
        version=max(model.taxonomy.versions),
        selection=Selection.from_request(request),
    )
    return json.dumps(answer).encode()


def median_us(fn: Callable[[], object], *, number: int = 20, repeat: int = 15) -> float:
    return statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def compare(what: str, old: Callable[[], object], new: Callable[[], object]) -> None:
    before, after = median_us(old), median_us(new)
    print(f"\n{what}: {before:.0f} -> {after:.0f} us per {BATCH}-document batch")


def test_request_body_encoding() -> None:
    """httpx's json= (json.dumps) against json_body + content=."""
    body: dict[str, Any] = {"documents": documents(), "threshold": "auto"}
    url = "https://t.example/predict-raw-emails"
    headers = {"Content-Type": "application/json"}
    compare(
        "request body",
        lambda: httpx.Request("POST", url, json=body),
        lambda: httpx.Request("POST", url, content=json_body(body), headers=headers),
    )


def test_document_hash() -> None:
    """The json module's canonical text against canonical_json, both hashed."""
    docs = documents()
    compare(
        "document_hash",
        lambda: [hashlib.sha256(canonical_json_slow(doc)).hexdigest() for doc in docs],
        lambda: [document_hash(doc) for doc in docs],
    )
