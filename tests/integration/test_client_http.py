"""The classifier client over real HTTP: against the emulator (faults, billing ledger,
request counts) and, for what the emulator cannot produce (403, an HTTP-date Retry-After,
a custom header, a redirect, a server echoing the token), a tiny canned aiohttp server."""

from __future__ import annotations

import email.utils
import logging
import time
from typing import Any

import pytest
import structlog

from gateway.classify import CommunicationsMiningClient
from gateway.classify._client import CustomEndpoint, TenantEndpoint
from gateway.config import build_config
from gateway.documents import RawEmailDocument
from gateway.errors import (
    AuthError,
    ClassifierError,
    ClassifierTimeout,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
    TransportError,
)
from gateway.testing import EmulatorHandle

from .canned_http import Canned, canned_server, ok_body

TOKEN = "emu-token-5f3a9c"
pytestmark = pytest.mark.emulator(
    token=TOKEN,
    faults={"fail_rate": 0.0, "fail_status": "503", "latency_ms": 0.0, "retry_after": 1.0},
    reset=True,
)
FAST: dict[str, Any] = {"attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05}


def doc(text: str, subject: str = "hello") -> RawEmailDocument:
    return {
        "raw_email": {
            "headers": {"raw": f"Subject: {subject}\r\nFrom: a@example.com"},
            "body": {"plain": text},
        }
    }


def client_for(
    emu: EmulatorHandle, *, token: str = TOKEN, timeout: float = 10.0, **kw: Any
) -> CommunicationsMiningClient:
    from gateway.classify._retry import RetryPolicy

    retry = RetryPolicy(**{**FAST, **kw.pop("retry", {})})
    endpoint = TenantEndpoint(emu.base_url, emu.project, emu.dataset, token)
    return CommunicationsMiningClient(endpoint, timeout=timeout, retry=retry, **kw)


async def test_predictions_come_back_typed_in_request_order_and_are_billed_once(
    emu: EmulatorHandle,
) -> None:
    """Three documents -> three predictions in order; the ledger bills exactly three."""
    client = client_for(emu)
    try:
        batch = await client.predict_raw_emails(
            [doc("please pay invoice INV-12345"), doc("hello"), doc("I want a refund")]
        )
    finally:
        await client.aclose()
    invoice, nothing, refund = batch.predictions
    assert invoice.label("Finance > Invoice") is not None
    assert refund.label("Finance > Refund") is not None
    assert nothing.label("Finance > Invoice") is None
    assert batch.model_version == 7
    assert emu.stats()["documents_billed"] == 3


async def test_staging_and_integer_versions_reach_the_right_model(emu: EmulatorHandle) -> None:
    """model_version 'staging' resolves to 8; an unknown integer is a NotFoundError."""
    staging = client_for(emu, model_version="staging")
    unknown = client_for(emu, model_version=99)
    try:
        assert (await staging.predict_raw_emails([doc("invoice")])).model_version == 8
        with pytest.raises(NotFoundError):
            await unknown.predict_raw_emails([doc("invoice")])
    finally:
        await staging.aclose()
        await unknown.aclose()
    assert emu.stats()["requests"] == 2


@pytest.mark.parametrize(("status", "cls"), [("503", ServerError), ("502-html", ServerError)])
async def test_server_errors_are_retried_up_to_the_attempt_limit(
    emu: EmulatorHandle, status: str, cls: type[ClassifierError]
) -> None:
    """A 5xx (JSON or a proxy's HTML) is retried: 4 attempts, then the ServerError."""
    emu.set_faults(fail_rate=1.0, fail_status=status)
    client = client_for(emu)
    try:
        with pytest.raises(cls) as exc:
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    assert "<" not in str(exc.value)
    stats = emu.stats()
    assert stats["requests"] == 4
    assert stats["documents_billed"] == 0


async def test_a_429_is_retried_no_sooner_than_retry_after(emu: EmulatorHandle) -> None:
    """429 + Retry-After: 0.5 -> each retry waits >= 0.5 s; 3 attempts in all."""
    emu.set_faults(fail_rate=1.0, fail_status="429", retry_after=0.5)
    client = client_for(emu, retry={"attempts": 3})
    started = time.monotonic()
    try:
        with pytest.raises(RateLimitedError) as exc:
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    elapsed = time.monotonic() - started
    assert exc.value.retry_after == 0.5
    assert emu.stats()["requests"] == 3
    assert 1.0 <= elapsed < 1.0 + 3.0


async def test_a_retry_after_beyond_the_budget_fails_at_once(emu: EmulatorHandle) -> None:
    """Retry-After 30 s with a 2 s budget: the RateLimitedError comes at once, no retry."""
    emu.set_faults(fail_rate=1.0, fail_status="429", retry_after=30)
    client = client_for(emu, timeout=2.0)
    started = time.monotonic()
    try:
        with pytest.raises(RateLimitedError):
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    assert time.monotonic() - started < 1.5
    assert emu.stats()["requests"] == 1


@pytest.mark.parametrize(
    ("fail_status", "cls"),
    [("400", InvalidRequestError), ("422", InvalidRequestError), ("401", AuthError)],
)
async def test_refused_requests_are_not_retried(
    emu: EmulatorHandle, fail_status: str, cls: type[ClassifierError]
) -> None:
    """400, 422 and 401 are final: exactly one request."""
    emu.set_faults(fail_rate=1.0, fail_status=fail_status)
    client = client_for(emu)
    try:
        with pytest.raises(cls):
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    assert emu.stats()["requests"] == 1


async def test_a_wrong_token_is_an_auth_error_that_does_not_show_the_token(
    emu: EmulatorHandle,
) -> None:
    """The emulator answers 401 to a wrong token: AuthError, one request, no token in text."""
    client = client_for(emu, token="wrong-token-93a1b7")
    try:
        with pytest.raises(AuthError) as exc:
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    assert "wrong-token-93a1b7" not in str(exc.value)
    assert emu.stats()["requests"] == 1


async def test_the_deadline_bounds_a_call_that_never_answers(emu: EmulatorHandle) -> None:
    """Emulator 'timeout' fault (request held) -> ClassifierTimeout within budget + slack."""
    emu.set_faults(fail_rate=1.0, fail_status="timeout")
    client = client_for(emu, timeout=1.0)
    started = time.monotonic()
    try:
        with pytest.raises(ClassifierTimeout):
            await client.predict_raw_emails([doc("invoice")])
    finally:
        await client.aclose()
    assert 0.9 <= time.monotonic() - started < 1.0 + 0.5


@pytest.mark.parametrize("kind", ["malformed-shape", "malformed-json"])
async def test_a_malformed_answer_is_rejected_and_not_retried(
    emu: EmulatorHandle, kind: str
) -> None:
    """Fewer predictions than documents, or a cut JSON body: MalformedResponseError, once."""
    emu.set_faults(fail_rate=1.0, fail_status=kind)
    client = client_for(emu)
    try:
        with pytest.raises(MalformedResponseError):
            await client.predict_raw_emails([doc("invoice"), doc("refund")])
    finally:
        await client.aclose()
    assert emu.stats()["requests"] == 1


async def test_validation_returns_the_taxonomy(emu: EmulatorHandle) -> None:
    """validation('latest') gives version, label names and stats."""
    client = client_for(emu)
    try:
        summary = await client.validation("latest")
    finally:
        await client.aclose()
    assert "Finance > Invoice" in summary.label_names
    assert summary.num_labels == len(summary.labels)


async def test_the_custom_provider_speaks_the_same_shape_to_its_url(
    emu: EmulatorHandle,
) -> None:
    """provider = custom, url = the emulator's route, secret from env -> Bearer, billed."""
    config = build_config(
        {
            "classifier": {
                "provider": "custom",
                "url": emu.url("predict-raw-emails"),
                "secret_env": "MODEL_SECRET",
            }
        },
        file=None,
        env={},
    ).classifier
    client = CommunicationsMiningClient.from_config(config, env={"MODEL_SECRET": TOKEN})
    try:
        batch = await client.predict_raw_emails([doc("refund please")])
    finally:
        await client.aclose()
    assert batch.predictions[0].label("Finance > Refund") is not None
    assert emu.stats()["documents_billed"] == 1


async def test_the_token_never_reaches_exceptions_or_logs(
    emu: EmulatorHandle, caplog: pytest.LogCaptureFixture
) -> None:
    """Across 5xx retries, 401 and timeouts, neither logs nor errors contain the token."""
    caplog.set_level(logging.DEBUG)
    texts: list[str] = []
    with structlog.testing.capture_logs() as captured:
        for status, token in (("503", TOKEN), ("401", TOKEN), ("timeout", TOKEN)):
            emu.set_faults(fail_rate=1.0, fail_status=status)
            client = client_for(emu, token=token, timeout=0.5)
            try:
                await client.predict_raw_emails([doc("invoice")])
            except ClassifierError as exc:
                texts += [str(exc), repr(exc), repr(exc.__cause__), repr(exc.__context__)]
            finally:
                await client.aclose()
    assert texts and captured
    everything = "\n".join([*texts, caplog.text, *(repr(e) for e in captured)])
    assert TOKEN not in everything


# -- conditions only a canned server can produce --------------------------------------


def canned_client(base_url: str, **kw: Any) -> CommunicationsMiningClient:
    from gateway.classify._retry import RetryPolicy

    endpoint = kw.pop("endpoint", None) or TenantEndpoint(base_url, "acme", "inbox", TOKEN)
    return CommunicationsMiningClient(endpoint, retry=RetryPolicy(**FAST), **kw)


async def test_a_403_is_an_auth_error_and_is_not_retried() -> None:
    """403 (token without permission) -> AuthError after one request."""
    async with canned_server([Canned(403, {"status": "error", "message": "forbidden"})]) as srv:
        client = canned_client(srv.base_url)
        try:
            with pytest.raises(AuthError, match="forbidden"):
                await client.predict_raw_emails([doc("x")])
        finally:
            await client.aclose()
    assert srv.requests == 1


async def test_a_retry_after_http_date_is_honoured_then_the_call_succeeds() -> None:
    """429 with Retry-After as an HTTP date ~2 s ahead, then 200: waits >= 1 s, succeeds."""
    when = email.utils.formatdate(time.time() + 2, usegmt=True)
    script = [
        Canned(429, {"status": "error", "message": "slow down"}, headers={"Retry-After": when}),
        Canned(200, ok_body(1)),
    ]
    async with canned_server(script) as srv:
        client = canned_client(srv.base_url)
        started = time.monotonic()
        try:
            batch = await client.predict_raw_emails([doc("x")])
        finally:
            await client.aclose()
        elapsed = time.monotonic() - started
    assert batch.predictions[0].label("Finance") is not None
    assert srv.requests == 2
    assert 1.0 <= elapsed < 5.0


async def test_a_server_error_then_success_returns_the_success() -> None:
    """503 then 200: one retry, the predictions of the second answer."""
    script = [Canned(503, {"status": "error", "message": "busy"}), Canned(200, ok_body(2))]
    async with canned_server(script) as srv:
        client = canned_client(srv.base_url)
        try:
            batch = await client.predict_raw_emails([doc("a"), doc("b")])
        finally:
            await client.aclose()
    assert len(batch.predictions) == 2 and srv.requests == 2


async def test_the_custom_provider_sends_its_secret_raw_in_a_custom_header() -> None:
    """secret_header X-Api-Key: the raw secret there, no Authorization; same body shape."""
    async with canned_server([Canned(200, ok_body(1))]) as srv:
        endpoint = CustomEndpoint(f"{srv.base_url}/v1/classify", "X-Api-Key", "raw-secret-77c1")
        client = canned_client(srv.base_url, endpoint=endpoint, threshold="auto")
        try:
            await client.predict_raw_emails([doc("x")])
        finally:
            await client.aclose()
    seen = srv.seen[0]
    assert seen.path == "/v1/classify"
    assert seen.headers["X-Api-Key"] == "raw-secret-77c1"
    assert "Authorization" not in seen.headers
    assert seen.body == {
        "documents": [doc("x")],
        "transform_tag": "generic.0.CONVKER5",
        "threshold": "auto",
    }


async def test_a_redirect_is_not_followed() -> None:
    """A 302 is not followed (the token must not travel elsewhere): malformed, one request."""
    script = [Canned(302, {"status": "error", "message": "moved"}, headers={"Location": "/x"})]
    async with canned_server(script) as srv:
        client = canned_client(srv.base_url)
        try:
            with pytest.raises(MalformedResponseError):
                await client.predict_raw_emails([doc("x")])
        finally:
            await client.aclose()
    assert srv.requests == 1


async def test_a_server_echoing_the_token_in_its_error_gets_it_scrubbed() -> None:
    """An error message that repeats the token is scrubbed before it becomes exception text."""
    body = {"status": "error", "message": f"token {TOKEN} is not valid"}
    async with canned_server([Canned(401, body)]) as srv:
        client = canned_client(srv.base_url)
        try:
            with pytest.raises(AuthError) as exc:
                await client.predict_raw_emails([doc("x")])
        finally:
            await client.aclose()
    assert TOKEN not in str(exc.value) and "[REDACTED]" in str(exc.value)


async def test_a_closed_port_is_a_transport_error_after_retries() -> None:
    """Nothing listening: TransportError once the attempts are spent."""
    async with canned_server([Canned(200, ok_body(1))]) as srv:
        base = srv.base_url
    client = canned_client(base)
    try:
        with pytest.raises(TransportError):
            await client.predict_raw_emails([doc("x")])
    finally:
        await client.aclose()


async def test_predict_in_comments_format_and_predict_comments_by_uid(
    emu: EmulatorHandle,
) -> None:
    """predict (messages format) and predict-comments (uids) parse into typed results."""
    client = client_for(emu)
    comment = {
        "messages": [
            {"body": {"text": "Please refund order ORD-123456"}, "subject": {"text": "Refund"}}
        ],
        "user_properties": {"string:City": "London"},
    }
    try:
        batch = await client.predict([comment])
        uids = await client.predict_comments(["18ba5ce699f8da1f.0001", "18ba5ce699f8da1f.0002"])
    finally:
        await client.aclose()
    assert batch.predictions[0].label("Finance > Refund") is not None
    assert [u.uid for u in uids] == ["18ba5ce699f8da1f.0001", "18ba5ce699f8da1f.0002"]
