"""Classifier client, without a network: request bodies, URLs, auth headers, error mapping,
Retry-After parsing and response parsing."""

from __future__ import annotations

import email.utils
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.classify import CommunicationsMiningClient, parse_prediction_batch
from gateway.classify._client import CustomEndpoint, TenantEndpoint, label_thresholds
from gateway.classify._http import error_from_response, json_object, parse_retry_after
from gateway.classify._request_json import json_body
from gateway.classify._responses import parse_comment_predictions, parse_validation
from gateway.config import build_config
from gateway.documents import RawEmailDocument
from gateway.errors import (
    AuthError,
    ClassifierRequestError,
    ConfigError,
    InvalidRequestError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    ServerError,
)
from gateway.mail import build_document, parse_message

DOC: RawEmailDocument = {
    "raw_email": {"headers": {"raw": "Subject: hi"}, "body": {"plain": "refund please"}}
}


def response(status: int, body: Any = None, *, text: str | None = None, **headers: str):
    if text is not None:
        return httpx.Response(status, text=text, headers=headers)
    return httpx.Response(status, json=body, headers=headers)


def test_tenant_urls_put_project_dataset_version_and_route_in_the_path() -> None:
    """The URL is base/api/v1/datasets/{project}/{dataset}/labellers/{version}/{route}."""
    ep = TenantEndpoint("https://t.example/reinfer_/", "acme", "in box", "tok-123456")
    assert ep.url("predict-raw-emails", 7) == (
        "https://t.example/reinfer_/api/v1/datasets/acme/in%20box/labellers/7/predict-raw-emails"
    )
    assert ep.url("validation", "live").endswith("/labellers/live/validation")


def test_tenant_token_travels_as_bearer_and_never_in_repr() -> None:
    """The token goes in Authorization: Bearer, and repr() of the endpoint hides it."""
    ep = TenantEndpoint("https://t.example", "acme", "inbox", "tok-secret-1")
    assert ep.auth_headers() == {"Authorization": "Bearer tok-secret-1"}
    assert "tok-secret-1" not in repr(ep)


@pytest.mark.parametrize(
    ("header", "expected"),
    [("Authorization", "Bearer s3cret-value"), ("X-Api-Key", "s3cret-value")],
)
def test_custom_secret_is_bearer_for_authorization_and_raw_otherwise(
    header: str, expected: str
) -> None:
    """Custom provider: Bearer <secret> in Authorization, the raw secret in any other header."""
    ep = CustomEndpoint("https://m.example/predict?key=abc", header, "s3cret-value")
    assert ep.auth_headers() == {header: expected}
    assert ep.description == "custom https://m.example/predict"


def test_custom_provider_serves_only_predict_raw_emails() -> None:
    """Validation and the other routes are refused for a custom URL."""
    ep = CustomEndpoint("https://m.example/predict")
    assert ep.url("predict-raw-emails", "live") == "https://m.example/predict"
    with pytest.raises(ClassifierRequestError):
        ep.url("validation", "live")


def test_label_names_from_config_become_lists_of_parts() -> None:
    """Config names "A > B" become lists of parts; the threshold key only when set."""
    assert label_thresholds([("Finance > Invoice", 0.6), ("Urgent", None)]) == [
        {"name": ["Finance", "Invoice"], "threshold": 0.6},
        {"name": ["Urgent"]},
    ]


async def test_raw_emails_request_has_tag_threshold_labels_and_comments_only_when_asked() -> None:
    """The predict-raw-emails body carries documents, transform_tag, threshold, labels."""
    client = CommunicationsMiningClient(
        TenantEndpoint("https://t.example", "a", "b", "tok-123456"),
        threshold="auto",
        labels=[("IT > Incident", 0.5)],
        transform_tag="generic.0.CONVKER5",
    )
    try:
        body = client.raw_emails_request([DOC])
        assert body == {
            "documents": [DOC],
            "transform_tag": "generic.0.CONVKER5",
            "threshold": "auto",
            "labels": [{"name": ["IT", "Incident"], "threshold": 0.5}],
        }
        assert client.raw_emails_request([DOC], include_comments=True)["include_comments"]
    finally:
        await client.aclose()


def _classifier_config(provider: str, **extra: Any):
    data: dict[str, Any] = {"classifier": {"provider": provider, **extra}}
    if provider == "communications-mining":
        data["classifier"].update(base_url="https://t.example", project="a", dataset="b")
    return build_config(data, file="gw.toml", env={}).classifier


def test_missing_token_is_a_config_error_naming_the_key_and_the_variable() -> None:
    """No token in the env -> ConfigError naming classifier.token_env and the variable."""
    config = _classifier_config("communications-mining", token_env="MY_CM_TOKEN")
    with pytest.raises(ConfigError) as exc:
        CommunicationsMiningClient.from_config(config, env={})
    assert "classifier.token_env" in str(exc.value) and "MY_CM_TOKEN" in str(exc.value)


def test_missing_custom_secret_is_a_config_error_naming_the_key() -> None:
    """secret_env set but empty -> ConfigError naming classifier.secret_env."""
    config = _classifier_config("custom", url="https://m.example/p", secret_env="MODEL_KEY")
    with pytest.raises(ConfigError) as exc:
        CommunicationsMiningClient.from_config(config, env={})
    assert "classifier.secret_env" in str(exc.value) and "MODEL_KEY" in str(exc.value)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, InvalidRequestError),
        (401, AuthError),
        (403, AuthError),
        (404, NotFoundError),
        (409, ClassifierRequestError),
        (422, InvalidRequestError),
        (429, RateLimitedError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
    ],
)
def test_status_codes_map_to_the_error_tree(status: int, cls: type[Exception]) -> None:
    """Each HTTP status gives its documented exception class, message from the body."""
    error = error_from_response(response(status, {"status": "error", "message": "nope here"}))
    assert type(error) is cls
    assert error.status == status
    assert "nope here" in str(error)


def test_a_proxy_html_page_gives_the_right_class_and_a_short_message() -> None:
    """A 502 HTML page from a proxy is a ServerError whose text holds no HTML."""
    html = "<html><head><title>502 Bad Gateway</title></head><body>" + "x" * 5000 + "</body>"
    error = error_from_response(response(502, text=html, **{"content-type": "text/html"}))
    assert isinstance(error, ServerError)
    assert "<" not in str(error) and len(str(error)) < 120
    assert "502" in str(error) and "text/html" in str(error)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """Retry-After: delta-seconds or an IMF-fixdate; garbage and absence give None."""
    now = time.time()
    assert parse_retry_after("3", now=now) == 3.0
    assert parse_retry_after("1.5") == 1.5
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_429_carries_retry_after_from_the_header() -> None:
    """429 with Retry-After: 2 -> RateLimitedError(retry_after=2)."""
    error = error_from_response(
        response(429, {"status": "error", "message": "slow"}, **{"retry-after": "2"})
    )
    assert isinstance(error, RateLimitedError) and error.retry_after == 2.0


@pytest.mark.parametrize(
    "body",
    ["not json", json.dumps([1, 2]), json.dumps({"status": "error", "message": "x"}), "{}"],
)
def test_a_2xx_body_that_is_not_an_ok_object_is_malformed(body: str) -> None:
    """A 200 whose body is not JSON, not an object, or not status ok is malformed."""
    with pytest.raises(MalformedResponseError):
        json_object(response(200, text=body))


OK_BODY: dict[str, Any] = {
    "status": "ok",
    "model": {"version": 7, "time": "2024-05-01T10:00:00Z"},
    "predictions": [
        [
            {"name": ["Finance"], "probability": 0.9},
            {"name": ["Finance", "Invoice"], "probability": 0.9, "sentiment": -0.2},
        ],
        [],
    ],
    "entities": [
        [
            {
                "id": "e1",
                "name": "invoice-number",
                "kind": "invoice-number",
                "formatted_value": "INV-1234",
                "probability": None,
                "span": {
                    "content_part": "body",
                    "message_index": 0,
                    "char_start": 1,
                    "char_end": 9,
                    "utf16_byte_start": 2,
                    "utf16_byte_end": 18,
                },
                "capture_ids": [],
            }
        ],
        [],
    ],
    "label_properties": [
        [{"property_id": "1", "property_name": "tone", "value": -0.4}],
        [],
    ],
    "sentiment": [{"total": -0.5}, {"total": 0.25}],
}


def test_a_predict_body_becomes_one_typed_prediction_per_document() -> None:
    """Labels, entities, label properties and sentiment land on the right document."""
    batch = parse_prediction_batch(OK_BODY, 2)
    first, second = batch.predictions
    assert batch.model_version == 7
    assert first.label("Finance > Invoice") is not None
    assert first.entities[0].formatted_value == "INV-1234"
    assert first.label_properties[0].value == -0.4
    assert (first.sentiment, second.sentiment) == (-0.5, 0.25)
    assert second.labels == ()


@pytest.mark.parametrize("key", ["predictions", "entities", "label_properties", "sentiment"])
def test_a_per_document_array_of_the_wrong_length_is_malformed(key: str) -> None:
    """Any per-document array that does not match the document count is rejected."""
    body = {**OK_BODY, key: OK_BODY[key][:1]}
    with pytest.raises(MalformedResponseError, match=key if key != "predictions" else "1 pred"):
        parse_prediction_batch(body, 2)


def test_a_label_with_a_probability_out_of_range_is_malformed() -> None:
    """probability 1.7 breaks the contract: malformed, and the message shows no content."""
    body = {"status": "ok", "predictions": [[{"name": ["X"], "probability": 1.7}]]}
    with pytest.raises(MalformedResponseError) as exc:
        parse_prediction_batch(body, 1)
    assert "1.7" not in str(exc.value)


def test_predict_comments_items_carry_their_uid() -> None:
    """predict-comments returns flat items: uid + labels + entities."""
    body = {
        "status": "ok",
        "predictions": [
            {"uid": "18ba5ce699f8da1f.0001", "labels": [{"name": ["A"], "probability": 0.8}]},
            {"uid": "18ba5ce699f8da1f.0002", "labels": [], "entities": []},
        ],
    }
    items = parse_comment_predictions(body)
    assert [i.uid for i in items] == ["18ba5ce699f8da1f.0001", "18ba5ce699f8da1f.0002"]
    assert items[0].top_label is not None and items[0].top_label.full_name == "A"


def test_validation_accepts_the_documented_example_with_nulls() -> None:
    """The seed's validation example parses; nullable quality fields may be null."""
    body = {
        "status": "ok",
        "validation": {
            "coverage": 0.91,
            "dataset_quality": "good",
            "labels": [
                {"name": "Notification", "parts": ["Notification"]},
                {
                    "name": "Notification > Out of Office",
                    "parts": ["Notification", "Out of Office"],
                },
            ],
            "mean_average_precision_safe": None,
            "num_amber_labels": 1,
            "num_labels": 2,
            "num_red_labels": 1,
            "num_reviewed_comments": 10251,
            "balance_quality": None,
            "version": 5,
        },
    }
    summary = parse_validation(body)
    assert summary.version == 5
    assert summary.label_names == ("Notification", "Notification > Out of Office")
    assert summary.mean_average_precision_safe is None


def test_validation_without_a_version_is_malformed() -> None:
    """The version is the one field the taxonomy cannot do without."""
    with pytest.raises(MalformedResponseError):
        parse_validation({"status": "ok", "validation": {"labels": []}})


# --- request body encoding -------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=12,
)


def httpx_body(body: dict[str, Any]) -> bytes:
    """What httpx sends for ``json=body`` (raises ValueError where it refuses)."""
    return b"".join(httpx.Request("POST", "https://t.example", json=body).stream)  # type: ignore[arg-type]


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_the_fast_request_body_means_what_httpx_would_send(body: dict[str, Any]) -> None:
    """json_body gives JSON equal to httpx's, or None exactly where httpx must decide
    (NaN, infinities, lone surrogates) or where a text merely mentions NaN/Infinity."""
    content = json_body(body)
    try:
        expected = httpx_body(body)
    except ValueError:
        assert content is None  # httpx raises: the fast path must not send anything
        return
    if content is not None:
        assert json.loads(content) == json.loads(expected)


def mock_client(seen: list[httpx.Request]) -> CommunicationsMiningClient:
    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        n = len(json.loads(request.content)["documents"])
        return httpx.Response(200, json={"status": "ok", "predictions": [[]] * n})

    return CommunicationsMiningClient(
        TenantEndpoint("https://t.example", "a", "b", "tok-123456"),
        transport=httpx.MockTransport(answer),
    )


async def test_the_request_is_json_with_its_content_type_and_length() -> None:
    seen: list[httpx.Request] = []
    client = mock_client(seen)
    try:
        doc: Any = {**DOC, "user_properties": {"number:Size KB": 4.1}}
        await client.predict_raw_emails([doc, DOC])
        (request,) = seen
        assert request.headers["content-type"] == "application/json"
        assert int(request.headers["content-length"]) == len(request.content)
        assert json.loads(request.content)["documents"] == [doc, DOC]
    finally:
        await client.aclose()


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
async def test_a_nan_or_infinite_property_is_an_invalid_request_and_nothing_is_sent(
    value: float,
) -> None:
    seen: list[httpx.Request] = []
    client = mock_client(seen)
    try:
        doc: Any = {**DOC, "user_properties": {"number:Score": value}}
        with pytest.raises(InvalidRequestError, match="request is not valid JSON"):
            await client.predict_raw_emails([doc])
        assert seen == []
    finally:
        await client.aclose()


async def test_a_text_that_says_nan_or_infinity_is_still_sent() -> None:
    seen: list[httpx.Request] = []
    client = mock_client(seen)
    try:
        doc: Any = {
            "raw_email": {"headers": {"raw": "Subject: NaN"}, "body": {"plain": "Infinity"}}
        }
        batch = await client.predict_raw_emails([doc])
        assert len(batch.predictions) == 1 and json.loads(seen[0].content)["documents"] == [doc]
    finally:
        await client.aclose()


def test_a_request_of_real_documents_takes_the_fast_path() -> None:
    """Every fixture message's document, user properties included: json_body must not
    hand it back to httpx (the fast path would silently stop paying)."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "mail"
    documents = []
    for path in sorted(fixtures.glob("*.eml")):
        raw = path.read_bytes()
        props: dict[str, str | float] = {"number:Score": 0.7, "string:Team": "AP"}
        documents.append(build_document(parse_message(raw), raw, user_properties=props))
    body: dict[str, Any] = {"documents": documents, "threshold": 0.25, "labels": [{"name": ["A"]}]}
    content = json_body(body)
    assert content is not None and json.loads(content) == json.loads(httpx_body(body))
