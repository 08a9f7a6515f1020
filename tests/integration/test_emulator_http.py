"""The emulator over real HTTP on loopback: routes, auth, validation, ledger, faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.testing import EmulatorHandle, running_emulator
from tests.unit.test_emulator_validate import RAW_CASES, valid_raw

TAG = "generic.0.CONVKER5"


# One keep-alive client for the module: httpx builds a TLS context per Client, which costs
# up to seconds on a loaded machine, so a module-level HTTP.post() per call is far slower.
HTTP = httpx.Client(timeout=30)


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    yield HTTP
    HTTP.close()


@pytest.fixture
def fresh(emu: EmulatorHandle, http: httpx.Client) -> Iterator[EmulatorHandle]:
    """The shared emulator with an empty ledger and no faults."""
    emu.set_faults(fail_rate=0.0, latency_ms=0.0, fail_status="503", retry_after=1.0)
    emu.reset()
    yield emu


def raw_doc(plain: str, subject: str = "Hello", message_id: str = "1@x") -> dict[str, Any]:
    return {
        "raw_email": {
            "headers": {"raw": f"Subject: {subject}\r\nMessage-ID: <{message_id}>"},
            "body": {"plain": plain},
        }
    }


def post(
    emu: EmulatorHandle, body: Any, route: str = "predict-raw-emails", version: str = "live"
) -> httpx.Response:
    return HTTP.post(emu.url(route, version), headers=emu.headers, json=body, timeout=30)


def assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    data = response.json()
    assert data["status"] == "error"
    assert set(data) == {"status", "message"}
    message: str = data["message"]
    return message


# -- success shapes --------------------------------------------------------------------


def test_predict_raw_emails_answers_in_the_documented_shape(fresh: EmulatorHandle) -> None:
    """200 with status ok, one entry per document in predictions/entities/... and model."""
    body = {"documents": [raw_doc("refund ORD-123456"), raw_doc("hi")], "transform_tag": TAG}
    response = post(fresh, body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["server-timing"].startswith("total;dur=")
    data = response.json()
    assert data["status"] == "ok"
    assert len(data["predictions"]) == len(data["entities"]) == 2
    assert len(data["label_properties"]) == len(data["sentiment"]) == 2
    assert ["Finance", "Refund"] in [lb["name"] for lb in data["predictions"][0]]
    assert data["predictions"][1] == []
    assert data["model"]["version"] == 7 and data["model"]["time"]
    assert "comments" not in data


def test_version_selectors_resolve_to_integer_versions(fresh: EmulatorHandle) -> None:
    """live -> 7, staging -> 8, "7" -> 7 in model.version."""
    body = {"documents": [raw_doc("refund")], "transform_tag": TAG}
    for version, expected in (("live", 7), ("staging", 8), ("7", 7), ("8", 8)):
        assert post(fresh, body, version=version).json()["model"]["version"] == expected


def test_entity_offsets_index_the_texts_returned_as_comments(fresh: EmulatorHandle) -> None:
    """With include_comments, each span's char and UTF-16 offsets locate the entity text."""
    plain = "Grüße 🙂🙂 from Zoë — pay INV-20240017 today"
    body = {
        "documents": [
            {
                "raw_email": {
                    "headers": {"parsed": {"Subject": "Re: ORD-123456 🚚", "Message-ID": "<m@x>"}},
                    "body": {"plain": plain},
                },
                "comment_id": "c-1",
            }
        ],
        "transform_tag": TAG,
        "include_comments": True,
    }
    data = post(fresh, body).json()
    message = data["comments"][0]["messages"][0]
    assert data["comments"][0]["id"] == "c-1"
    texts = {"subject": message["subject"]["text"], "body": message["body"]["text"]}
    assert texts["body"] == plain
    seen = {}
    for entity in data["entities"][0]:
        span = entity["span"]
        text = texts[span["content_part"]]
        piece = text[span["char_start"] : span["char_end"]]
        utf16 = text.encode("utf-16-le")[span["utf16_byte_start"] : span["utf16_byte_end"]]
        assert utf16.decode("utf-16-le") == piece
        seen[entity["kind"]] = (span["content_part"], piece, span["utf16_byte_start"])
    assert seen["order-number"] == ("subject", "ORD-123456", 8)
    # 24 code points precede it, two of them emoji: 26 UTF-16 units = 52 bytes.
    assert plain.index("INV-20240017") == 24
    assert seen["invoice-number"] == ("body", "INV-20240017", 52)


def test_predict_comments_format_route(fresh: EmulatorHandle) -> None:
    """/predict takes the comments format and bills its documents."""
    body = {
        "documents": [
            {
                "messages": [
                    {"body": {"text": "please refund"}, "subject": {"text": "ORD-123456"}},
                    {"body": {"text": "urgent!"}},
                ]
            }
        ],
        "threshold": "auto",
    }
    data = post(fresh, body, route="predict").json()
    names = {" > ".join(lb["name"]) for lb in data["predictions"][0]}
    assert {"Finance > Refund", "Urgent"} <= names
    assert all("auto_thresholds" in lb for lb in data["predictions"][0])
    (entity,) = data["entities"][0]
    assert entity["span"]["content_part"] == "subject"
    assert fresh.stats()["documents_billed"] == 1


def test_predict_comments_by_uid_is_deterministic_and_not_billed(fresh: EmulatorHandle) -> None:
    """/predict-comments answers per uid, the same each time, and bills nothing."""
    body = {"uids": ["18ba5ce699f8da1f.0001", "18ba5ce699f8da1f.0002"], "threshold": 0.0}
    first = post(fresh, body, route="predict-comments").json()
    assert first == post(fresh, body, route="predict-comments").json()
    assert [p["uid"] for p in first["predictions"]] == body["uids"]
    assert all(p["labels"] for p in first["predictions"])
    assert fresh.stats()["documents_billed"] == 0


def test_validation_route_lists_the_taxonomy(fresh: EmulatorHandle) -> None:
    """GET validation (live, 7, latest) returns the labels with parts and stats."""
    for version, expected in (("live", 7), ("7", 7), ("latest", 8), ("staging", 8)):
        response = HTTP.get(fresh.url("validation", version), headers=fresh.headers)
        data = response.json()
        assert data["status"] == "ok"
        validation = data["validation"]
        assert validation["version"] == expected
        assert {"name": "Finance > Invoice", "parts": ["Finance", "Invoice"]} in validation[
            "labels"
        ]
        assert validation["num_labels"] == len(validation["labels"])


def test_labels_filter_and_auto_thresholds_over_http(fresh: EmulatorHandle) -> None:
    """labels restricts the answer; "auto" adds auto_thresholds."""
    body = {
        "documents": [raw_doc("urgent refund asap")],
        "transform_tag": TAG,
        "threshold": "auto",
        "labels": [{"name": ["Urgent"]}, {"name": ["Finance", "Refund"], "threshold": 0.9}],
    }
    (labels,) = post(fresh, body).json()["predictions"]
    assert [lb["name"] for lb in labels] == [["Urgent"]]
    assert labels[0]["auto_thresholds"] == ["high_recall", "balanced", "high_precision"]


# -- auth and routing ------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong-token", "bearer", "Basic dGVzdC10b2tlbg==", "test-token"],
    ids=["missing", "wrong", "no-token", "basic", "no-scheme"],
)
def test_bad_or_missing_token_is_401_with_error_body(
    fresh: EmulatorHandle, header: str | None
) -> None:
    """Any route under /api/ without the right Bearer token is 401, nothing billed."""
    headers = {"Authorization": header} if header is not None else {}
    body = {"documents": [raw_doc("refund")], "transform_tag": TAG}
    response = HTTP.post(fresh.url(), headers=headers, json=body)
    assert "token" in assert_error(response, 401)
    response = HTTP.get(fresh.url("validation"), headers=headers)
    assert_error(response, 401)
    assert fresh.stats()["documents_billed"] == 0


def test_without_a_configured_token_any_bearer_token_works() -> None:
    """token=None accepts any non-empty Bearer token, still refuses none."""
    with running_emulator(token=None) as emu:
        ok = HTTP.get(emu.url("validation"), headers={"Authorization": "Bearer whatever"})
        assert ok.status_code == 200
        assert_error(HTTP.get(emu.url("validation")), 401)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/datasets/acme/inbox/labellers/9/predict-raw-emails", 404),
        ("/api/v1/datasets/acme/inbox/labellers/latest/predict-raw-emails", 404),
        ("/api/v1/datasets/acme/inbox/labellers/production/predict", 404),
        ("/api/v1/datasets/acme/inbox/labellers/07/predict", 404),
        ("/api/v1/datasets/acme/inbox/labellers/3/validation", 404),
        ("/api/v1/datasets/ac!me/inbox/labellers/live/predict-raw-emails", 404),
        ("/api/v1/datasets/acme/in.box/labellers/live/predict-raw-emails", 404),
        ("/api/v1/datasets/acme/inbox/labellers/live/predict-everything", 404),
        ("/api/v1/nonexistent_page", 404),
        ("/nowhere", 404),
    ],
)
def test_unknown_versions_names_and_routes_are_404(
    fresh: EmulatorHandle, path: str, status: int
) -> None:
    """Unknown model versions, invalid project/dataset names and routes: 404 + error body."""
    body = {"documents": [raw_doc("refund")], "transform_tag": TAG}
    response = HTTP.post(fresh.base_url + path, headers=fresh.headers, json=body)
    if path.endswith("validation"):
        response = HTTP.get(fresh.base_url + path, headers=fresh.headers)
    assert_error(response, status)


def test_wrong_method_is_405_with_error_body(fresh: EmulatorHandle) -> None:
    """GET on a POST route: 405, JSON error, Allow header."""
    response = HTTP.get(fresh.url(), headers=fresh.headers)
    assert_error(response, 405)
    assert response.headers["allow"] == "POST"


# -- validation over HTTP --------------------------------------------------------------

HTTP_CASES = [c for c in RAW_CASES if not c[0].startswith(("props-number-nan", "props-number-inf"))]


@pytest.mark.parametrize(
    ("mutate", "status", "text"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
def test_each_validation_rule_over_http(
    fresh: EmulatorHandle, mutate: Any, status: int, text: str
) -> None:
    """Every invalid predict-raw-emails body: its status, the path in the message, no bill."""
    body = valid_raw()
    replaced = mutate(body)
    response = post(fresh, replaced if replaced is not None else body)
    assert text in assert_error(response, status)


def test_malformed_json_non_utf8_and_nan_are_400(fresh: EmulatorHandle) -> None:
    """Bodies that are not JSON (or use NaN, which JSON lacks) are 400."""
    for content in (b"{", b"", b'{"documents": [}', b"\xff\xfe{}", b'{"threshold": NaN}'):
        response = HTTP.post(
            fresh.url(),
            headers={**fresh.headers, "Content-Type": "application/json"},
            content=content,
        )
        assert assert_error(response, 400).startswith("body:")
    assert fresh.stats()["documents_billed"] == 0


def test_body_over_the_size_cap_is_413_with_error_body() -> None:
    """A request body above the cap (64 MiB by default) is refused with the error body."""
    with running_emulator(client_max_size=4096) as emu:
        body = {"documents": [raw_doc("x" * 5000)], "transform_tag": TAG}
        assert_error(post(emu, body), 413)
        assert emu.stats()["documents_billed"] == 0


# -- the billing ledger ----------------------------------------------------------------


def test_ledger_bills_only_documents_of_successful_predict_calls(fresh: EmulatorHandle) -> None:
    """documents_billed counts 200s of predict/predict-raw-emails; errors bill nothing."""
    docs = [raw_doc("a", message_id="a@x"), raw_doc("b", message_id="b@x")]
    assert post(fresh, {"documents": docs, "transform_tag": TAG}).status_code == 200
    assert post(fresh, {"documents": docs[:1], "transform_tag": TAG}).status_code == 200
    assert post(fresh, {"documents": docs, "transform_tag": "bad"}).status_code == 422
    HTTP.get(fresh.url("validation"), headers=fresh.headers)
    HTTP.post(fresh.url(), json={"documents": docs, "transform_tag": TAG})  # 401
    stats = fresh.stats()
    assert stats["documents_billed"] == 3
    assert stats["documents_by_comment_id"] == {"a@x": 2, "b@x": 1}
    assert stats["requests"] == 5
    assert stats["requests_by_route"] == {"predict-raw-emails": 4, "validation": 1}
    assert stats["responses_by_status"] == {"200": 3, "422": 1, "401": 1}
    assert stats["faults_injected"] == 0
    fresh.reset()
    after = fresh.stats()
    assert after["documents_billed"] == 0 and after["requests"] == 0


def test_ai_units_bill_a_comment_once_unless_its_text_changes(fresh: EmulatorHandle) -> None:
    """The seed's rule: 1 AI unit per created comment, or per updated comment (by its
    Message ID) whose text changed; re-sending the same message costs documents, not units."""
    same = raw_doc("refund please", message_id="a@x")
    for _ in range(3):
        assert post(fresh, {"documents": [same], "transform_tag": TAG}).status_code == 200
    edited = raw_doc("refund please, now", message_id="a@x")
    other = raw_doc("refund please", message_id="b@x")
    assert post(fresh, {"documents": [edited, other], "transform_tag": TAG}).status_code == 200
    stats = fresh.stats()
    assert stats["documents_sent"] == 5 and stats["documents_billed"] == 5
    assert stats["ai_units"] == 3
    assert stats["ai_units_by_comment_id"] == {"a@x": 2, "b@x": 1}
    assert stats["documents_by_comment_id"] == {"a@x": 4, "b@x": 1}


def test_faulted_calls_count_as_sent_but_cost_nothing(fresh: EmulatorHandle) -> None:
    """A faulted call loads the API (documents_sent) but bills neither documents nor units."""
    fresh.set_faults(fail_rate=1.0, fail_status="503")
    docs = [raw_doc("a", message_id="a@x"), raw_doc("b", message_id="b@x")]
    assert post(fresh, {"documents": docs, "transform_tag": TAG}).status_code == 503
    fresh.set_faults(fail_rate=1.0, fail_status="malformed")
    assert post(fresh, {"documents": docs[:1], "transform_tag": TAG}).status_code == 200
    stats = fresh.stats()
    assert stats["documents_sent"] == 3
    assert stats["documents_billed"] == 0 and stats["ai_units"] == 0


# -- faults ----------------------------------------------------------------------------

BODY = {"documents": [raw_doc("refund"), raw_doc("invoice")], "transform_tag": TAG}


def test_fault_429_carries_retry_after_and_the_error_body(fresh: EmulatorHandle) -> None:
    """fail_status 429: every call 429 with Retry-After (seconds) and no bill."""
    fresh.set_faults(fail_rate=1.0, fail_status="429", retry_after=7)
    response = post(fresh, BODY)
    assert_error(response, 429)
    assert response.headers["retry-after"] == "7"
    stats = fresh.stats()
    assert stats["faults_injected"] == 1 and stats["documents_billed"] == 0


@pytest.mark.parametrize("status", ["500", "502", "503", "504"])
def test_fault_5xx_returns_the_json_error_body(fresh: EmulatorHandle, status: str) -> None:
    """Server errors come with the canonical {"status": "error"} body."""
    fresh.set_faults(fail_rate=1.0, fail_status=status)
    assert "emulated" in assert_error(post(fresh, BODY), int(status))
    assert fresh.stats()["faults_by_kind"] == {status: 1}


def test_fault_502_html_is_not_json(fresh: EmulatorHandle) -> None:
    """502-html: what a proxy sends, an HTML page a client must not try to parse as ours."""
    fresh.set_faults(fail_rate=1.0, fail_status="502-html")
    response = post(fresh, BODY)
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    with pytest.raises(json.JSONDecodeError):
        response.json()


def test_fault_malformed_json_is_a_200_that_does_not_parse(fresh: EmulatorHandle) -> None:
    """malformed-json: status 200, body cut mid-way; not billed."""
    fresh.set_faults(fail_rate=1.0, fail_status="malformed-json")
    response = post(fresh, BODY)
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        response.json()
    assert fresh.stats()["documents_billed"] == 0


def test_fault_malformed_shape_has_fewer_predictions_than_documents(
    fresh: EmulatorHandle,
) -> None:
    """malformed-shape: valid JSON, status ok, but one prediction for two documents."""
    fresh.set_faults(fail_rate=1.0, fail_status="malformed-shape")
    data = post(fresh, BODY).json()
    assert data["status"] == "ok"
    assert len(data["predictions"]) == 1
    assert fresh.stats()["faults_by_kind"] == {"malformed-shape": 1}


def test_fault_malformed_does_not_hide_a_genuine_error(fresh: EmulatorHandle) -> None:
    """A 422 request stays a 422 under "malformed": there is no answer to corrupt."""
    fresh.set_faults(fail_rate=1.0, fail_status="malformed")
    assert_error(post(fresh, {"documents": [], "transform_tag": TAG}), 400)
    assert fresh.stats()["faults_injected"] == 0


def test_fault_timeout_holds_the_request_past_the_client_timeout(fresh: EmulatorHandle) -> None:
    """timeout: no answer within the client's timeout; the server keeps serving others."""
    fresh.set_faults(fail_rate=1.0, fail_status="timeout")
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        HTTP.post(fresh.url(), headers=fresh.headers, json=BODY, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    fresh.set_faults(fail_rate=0.0)
    assert post(fresh, BODY).status_code == 200
    stats = fresh.stats()
    assert stats["faults_by_kind"] == {"timeout": 1}
    assert stats["documents_billed"] == 2


def test_a_held_request_is_released_when_the_emulator_stops() -> None:
    """Leaving running_emulator does not wait an hour for a held request."""
    outcome: list[object] = []
    with running_emulator(fail_rate=1.0, fail_status="timeout") as emu:

        def call() -> None:
            try:
                outcome.append(post(emu, BODY).status_code)
            except httpx.HTTPError as exc:
                outcome.append(type(exc).__name__)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 20
        while emu.stats()["faults_injected"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
    thread.join(timeout=20)
    assert time.monotonic() - started < 15
    assert outcome and outcome[0] in (503, "RemoteProtocolError", "ReadError")


def _statuses(emu: EmulatorHandle, client: httpx.Client, seed: int, n: int) -> list[int]:
    emu.set_faults(fail_rate=0.3, fail_status="429,500,503", seed=seed)
    emu.reset()
    codes = [client.get(emu.url("validation"), headers=emu.headers).status_code for _ in range(n)]
    assert emu.stats()["faults_injected"] == sum(c != 200 for c in codes)
    return codes


def test_fault_rate_is_seeded_and_roughly_honoured(
    fresh: EmulatorHandle, http: httpx.Client
) -> None:
    """Same seed -> same fault sequence; ~30% of calls fail, among the listed kinds."""
    first = _statuses(fresh, http, seed=42, n=80)
    assert first == _statuses(fresh, http, seed=42, n=80)
    assert first != _statuses(fresh, http, seed=7, n=80)
    failed = [c for c in first if c != 200]
    assert 12 <= len(failed) <= 36
    assert set(failed) == {429, 500, 503}


def test_the_seed_given_at_start_fixes_the_sequence() -> None:
    """running_emulator(seed=3) and a later re-seed to 3 replay the same faults."""
    with (
        running_emulator(fail_rate=0.5, fail_status="503", seed=3) as emu,
        httpx.Client(headers=emu.headers) as client,
    ):
        codes = [client.get(emu.url("validation")).status_code for _ in range(16)]
        assert {200, 503} == set(codes)
        emu.set_faults(seed=3)
        assert [client.get(emu.url("validation")).status_code for _ in range(16)] == codes


def test_latency_is_added_to_every_call(fresh: EmulatorHandle) -> None:
    """latency_ms 300: each call takes at least 0.3 s (401s and 404s included)."""
    fresh.set_faults(latency_ms=300)
    for url, headers in (
        (fresh.url("validation"), fresh.headers),
        (fresh.url("validation"), {}),
        (fresh.url("validation", "99"), fresh.headers),
    ):
        started = time.monotonic()
        HTTP.get(url, headers=headers, timeout=30)
        assert 0.3 <= time.monotonic() - started < 10


def test_set_faults_rejects_bad_values(fresh: EmulatorHandle) -> None:
    """POST /_emulator/faults refuses unknown kinds, rates outside 0..1, unknown fields."""
    for bad in ({"fail_status": "teapot"}, {"fail_rate": 2}, {"nope": 1}, {"latency_ms": "1"}):
        response = HTTP.post(fresh.base_url + "/_emulator/faults", json=bad)
        assert_error(response, 400)
    with pytest.raises(ValueError, match="fail_status"):
        fresh.set_faults(fail_status="999")
    assert fresh.set_faults(fail_status=503)["fail_status"] == "503"


# -- cm-gateway emulate ----------------------------------------------------------------


def test_cli_emulate_serves_on_an_ephemeral_port_and_stops_on_sigterm(tmp_path: Path) -> None:
    """`python -m gateway emulate --port 0` prints its URL, serves, logs, exits 0 on SIGTERM."""
    env = {**os.environ, "REINFER_TOKEN": "cli-secret-token"}
    stderr_path = tmp_path / "stderr.log"
    with stderr_path.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "emulate", "--port", "0", "--latency-ms", "1"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()  # the machine may be slow: no timer here
            prefix = "cm-gateway emulator listening on http://127.0.0.1:"
            assert line.startswith(prefix), line
            base = line.strip().removeprefix("cm-gateway emulator listening on ")
            url = f"{base}/api/v1/datasets/acme/inbox/labellers/live/predict-raw-emails"
            body = {"documents": [raw_doc("refund")], "transform_tag": TAG}
            ok = HTTP.post(url, json=body, headers={"Authorization": "Bearer cli-secret-token"})
            assert ok.status_code == 200
            refused = HTTP.post(url, json=body, headers={"Authorization": "Bearer other"})
            assert refused.status_code == 401
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = stderr_path.read_text()
    assert "predict-raw-emails" in log and "200" in log and "401" in log
    assert "cli-secret-token" not in log and "refund" not in log
