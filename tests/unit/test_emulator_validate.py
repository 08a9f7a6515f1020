"""The emulator's request validation: one invalid body per rule -> status and JSON path."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from gateway.emulator import KeywordModel, RequestInvalid, validate_predict_raw_emails
from gateway.emulator._validate import validate_predict, validate_predict_comments

KNOWN = KeywordModel.default().label_names


def valid_raw() -> dict[str, Any]:
    return {
        "transform_tag": "generic.0.CONVKER5",
        "threshold": 0.25,
        "include_comments": False,
        "labels": [{"name": ["Finance", "Invoice"], "threshold": 0.6}],
        "documents": [
            {
                "raw_email": {
                    "headers": {"raw": "Subject: hello\r\nFrom: a@example.com"},
                    "body": {"plain": "hello", "html": "<p>hello</p>"},
                    "attachments": [{"name": "a.pdf", "size": 3, "content_type": "pdf"}],
                },
                "user_properties": {"string:Mailbox": "ap@example.com", "number:Priority": 2},
                "comment_id": "abc-123",
            },
            {
                "raw_email": {
                    "headers": {"parsed": {"Subject": "x", "Message-ID": "<1@x>"}},
                    "body": {"plain": "second"},
                }
            },
        ],
    }


def valid_predict() -> dict[str, Any]:
    return {
        "threshold": "auto",
        "documents": [
            {
                "messages": [
                    {
                        "body": {"text": "Hi Bob"},
                        "subject": {"text": "Figures"},
                        "signature": {"text": "Alice"},
                        "from": "alice@company.com",
                        "to": ["bob@organisation.org"],
                        "sent_at": "2020-01-09T16:34:45Z",
                        "language": "en",
                    }
                ],
                "timestamp": "2013-09-12T20:01:20.000000+00:00",
                "user_properties": {"string:City": "London"},
                "text_format": "plain",
            }
        ],
    }


def valid_comments() -> dict[str, Any]:
    return {"uids": ["18ba5ce699f8da1f.0001", "18ba5ce699f8da1f.0002"], "threshold": 0.25}


def test_valid_bodies_pass_every_validator() -> None:
    """The reference bodies (the seed docs' shapes, every optional field set) validate."""
    validate_predict_raw_emails(valid_raw(), known_labels=KNOWN)
    validate_predict(valid_predict(), known_labels=KNOWN)
    validate_predict_comments(valid_comments(), known_labels=KNOWN)


def test_the_seed_doc_raw_email_example_validates() -> None:
    """The request of the API docs' predict-raw-emails example is valid as written."""
    body = {
        "documents": [
            {
                "raw_email": {
                    "body": {"plain": "Hi Bob,\n\nCould you send me the figures for today?"},
                    "headers": {
                        "parsed": {
                            "Date": "Thu, 09 Jan 2020 16:34:45 +0000",
                            "From": "alice@company.com",
                            "Message-ID": "abcdef@company.com",
                            "Subject": "Figures Request",
                        }
                    },
                },
                "user_properties": {"string:City": "London"},
            },
            {
                "raw_email": {
                    "body": {"html": "<p>Alice,</p>"},
                    "headers": {"raw": "Message-ID: 012345@company.com\nSubject: Re: Figures"},
                },
                "user_properties": {"string:City": "Bucharest"},
            },
        ],
        "include_comments": False,
        "threshold": 0.25,
        "transform_tag": "generic.0.CONVKER5",
    }
    validate_predict_raw_emails(body, known_labels=KNOWN)


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets ``path`` (dots, [i]) to ``value``."""

    def apply(body: dict[str, Any]) -> None:
        target: Any = body
        keys = path.replace("[", ".").replace("]", "").split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        last = keys[-1]
        if last.isdigit():
            target[int(last)] = value
        else:
            target[last] = value

    return apply


def _del(path: str) -> Mutation:
    def apply(body: dict[str, Any]) -> None:
        target: Any = body
        keys = path.replace("[", ".").replace("]", "").split(".")
        for key in keys[:-1]:
            target = target[int(key)] if key.isdigit() else target[key]
        del target[keys[-1]]

    return apply


def _too_many_documents(body: dict[str, Any]) -> None:
    body["documents"] = [body["documents"][1]] * 4097


D0 = "documents[0]"
RE0 = "documents[0].raw_email"

# (id, mutation, status, text expected in the message)
RAW_CASES: list[tuple[str, Mutation, int, str]] = [
    ("top-level-not-object", lambda b: [b], 400, "body: expected an object"),
    ("unknown-top-field", _set("extra", 1), 400, "extra: unknown field"),
    ("documents-missing", _del("documents"), 400, "documents: required field missing"),
    ("documents-not-array", _set("documents", {}), 400, "documents: expected an array"),
    ("documents-empty", _set("documents", []), 400, "documents: needs at least 1"),
    ("documents-too-many", _too_many_documents, 422, "documents: more than 4096 items"),
    ("transform-tag-missing", _del("transform_tag"), 400, "transform_tag: required field"),
    ("transform-tag-type", _set("transform_tag", 5), 400, "transform_tag: expected a string"),
    ("transform-tag-pattern", _set("transform_tag", "generic"), 422, "transform_tag: must look"),
    ("threshold-range", _set("threshold", 1.5), 422, "threshold: must be between 0 and 1"),
    ("threshold-negative", _set("threshold", -0.1), 422, "threshold: must be between 0 and 1"),
    ("threshold-string", _set("threshold", "high"), 422, "threshold: expected a number"),
    ("threshold-bool", _set("threshold", True), 400, "threshold: expected a number"),
    ("include-comments-type", _set("include_comments", "yes"), 400, "include_comments: expected"),
    ("labels-not-array", _set("labels", {}), 400, "labels: expected an array"),
    ("labels-too-many", _set("labels", [{"name": ["Urgent"]}] * 4097), 422, "labels: more than"),
    ("label-unknown-field", _set("labels[0].x", 1), 400, "labels[0].x: unknown field"),
    ("label-name-missing", _del("labels[0].name"), 400, "labels[0].name: required field"),
    ("label-name-empty", _set("labels[0].name", []), 422, "labels[0].name: needs at least 1"),
    ("label-name-too-deep", _set("labels[0].name", ["a"] * 65), 422, "labels[0].name: more than"),
    ("label-part-empty", _set("labels[0].name", [""]), 422, "labels[0].name[0]: must not be"),
    ("label-part-long", _set("labels[0].name", ["a" * 65]), 422, "labels[0].name[0]: longer"),
    ("label-part-type", _set("labels[0].name", [1]), 400, "labels[0].name[0]: expected a string"),
    ("label-threshold", _set("labels[0].threshold", 2), 422, "labels[0].threshold: must be"),
    ("label-unknown", _set("labels[0].name", ["Nope"]), 422, "labels[0].name: unknown label"),
    ("doc-not-object", _set("documents[0]", "x"), 400, "documents[0]: expected an object"),
    ("doc-unknown-field", _set(f"{D0}.id", "x"), 400, "documents[0].id: unknown field"),
    ("raw-email-missing", _del(f"{D0}.raw_email"), 400, "documents[0].raw_email: required"),
    ("raw-email-unknown", _set(f"{RE0}.x", 1), 400, "documents[0].raw_email.x: unknown field"),
    ("headers-missing", _del(f"{RE0}.headers"), 400, "raw_email.headers: required field"),
    ("headers-neither", _set(f"{RE0}.headers", {}), 400, "raw_email.headers: required field"),
    (
        "headers-both",
        _set(f"{RE0}.headers", {"raw": "a: b", "parsed": {}}),
        422,
        "raw_email.headers: exactly one",
    ),
    ("headers-unknown", _set(f"{RE0}.headers.x", "y"), 400, "raw_email.headers.x: unknown field"),
    ("headers-raw-type", _set(f"{RE0}.headers.raw", 1), 400, "headers.raw: expected a string"),
    ("headers-raw-long", _set(f"{RE0}.headers.raw", "a" * 65537), 422, "headers.raw: longer"),
    (
        "headers-parsed-type",
        _set(f"{RE0}.headers", {"parsed": []}),
        400,
        "headers.parsed: expected an object",
    ),
    (
        "headers-parsed-value",
        _set(f"{RE0}.headers", {"parsed": {"To": ["a"]}}),
        400,
        "headers.parsed['To']: expected a string",
    ),
    ("body-missing", _del(f"{RE0}.body"), 400, "raw_email.body: required field missing"),
    ("body-empty", _set(f"{RE0}.body", {}), 400, "raw_email.body: required field missing"),
    ("body-unknown", _set(f"{RE0}.body.text", "x"), 400, "raw_email.body.text: unknown field"),
    (
        "plain-too-long",
        _set(f"{RE0}.body.plain", "a" * 65537),
        422,
        "documents[0].raw_email.body.plain: longer than 65536 characters",
    ),
    ("plain-type", _set(f"{RE0}.body.plain", None), 400, "body.plain: expected a string, got null"),
    ("html-type", _set(f"{RE0}.body.html", 3), 400, "body.html: expected a string"),
    ("attachments-type", _set(f"{RE0}.attachments", {}), 400, "attachments: expected an array"),
    (
        "attachments-too-many",
        _set(f"{RE0}.attachments", [{"name": "a", "size": 1, "content_type": "x"}] * 129),
        422,
        "attachments: more than 128",
    ),
    ("att-unknown", _set(f"{RE0}.attachments[0].inline", True), 400, "[0].inline: unknown field"),
    ("att-name-missing", _del(f"{RE0}.attachments[0].name"), 400, "[0].name: required"),
    ("att-name-long", _set(f"{RE0}.attachments[0].name", "a" * 257), 422, "[0].name: longer"),
    ("att-size-bool", _set(f"{RE0}.attachments[0].size", True), 400, "[0].size: expected an int"),
    ("att-size-float", _set(f"{RE0}.attachments[0].size", 1.5), 400, "[0].size: expected an int"),
    ("att-size-string", _set(f"{RE0}.attachments[0].size", "1"), 400, "[0].size: expected an int"),
    ("att-size-negative", _set(f"{RE0}.attachments[0].size", -1), 422, "[0].size: must be >= 0"),
    (
        "att-ctype-long",
        _set(f"{RE0}.attachments[0].content_type", "a" * 257),
        422,
        "[0].content_type: longer",
    ),
    ("props-type", _set(f"{D0}.user_properties", []), 400, "user_properties: expected an object"),
    (
        "props-bad-prefix",
        _set(f"{D0}.user_properties", {"date:X": "y"}),
        422,
        "user_properties['date:X']: key must be",
    ),
    (
        "props-no-prefix",
        _set(f"{D0}.user_properties", {"Mailbox": "y"}),
        422,
        "user_properties['Mailbox']: key must be",
    ),
    (
        "props-empty-name",
        _set(f"{D0}.user_properties", {"string:": "y"}),
        422,
        "user_properties['string:']: key must be",
    ),
    (
        "props-string-empty",
        _set(f"{D0}.user_properties", {"string:X": "  "}),
        422,
        "must not be empty",
    ),
    (
        "props-string-number",
        _set(f"{D0}.user_properties", {"string:X": 3}),
        422,
        "a string: property needs a string",
    ),
    (
        "props-number-string",
        _set(f"{D0}.user_properties", {"number:X": "3"}),
        422,
        "a number: property needs a number, got string",
    ),
    (
        "props-number-bool",
        _set(f"{D0}.user_properties", {"number:X": True}),
        422,
        "a number: property needs a number, got boolean",
    ),
    (
        "props-number-nan",
        _set(f"{D0}.user_properties", {"number:X": float("nan")}),
        422,
        "must be a finite number",
    ),
    (
        "props-number-inf",
        _set(f"{D0}.user_properties", {"number:X": float("inf")}),
        422,
        "must be a finite number",
    ),
    ("comment-id-type", _set(f"{D0}.comment_id", 1), 400, "comment_id: expected a string"),
    ("comment-id-empty", _set(f"{D0}.comment_id", ""), 422, "comment_id: does not match"),
    ("comment-id-space", _set(f"{D0}.comment_id", "a b"), 422, "comment_id: does not match"),
    ("comment-id-long", _set(f"{D0}.comment_id", "a" * 1025), 422, "comment_id: does not match"),
]


@pytest.mark.parametrize(
    ("mutate", "status", "text"), [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES]
)
def test_predict_raw_emails_rejects_each_rule_with_status_and_path(
    mutate: Mutation, status: int, text: str
) -> None:
    """Each invalid predict-raw-emails body gets its status and a message naming the path."""
    body = valid_raw()
    result = mutate(body)
    if result is not None:
        body = result
    with pytest.raises(RequestInvalid) as info:
        validate_predict_raw_emails(body, known_labels=KNOWN)
    assert info.value.status == status, info.value.message
    assert text in info.value.message


def test_errors_name_the_index_of_the_faulty_document() -> None:
    """A fault in the 2nd document is reported as documents[1], not documents[0]."""
    body = valid_raw()
    body["documents"][1]["raw_email"]["body"]["plain"] = "x" * 65_537
    with pytest.raises(RequestInvalid) as info:
        validate_predict_raw_emails(body)
    assert info.value.message == "documents[1].raw_email.body.plain: longer than 65536 characters"


def test_limits_are_inclusive() -> None:
    """Exactly 65,536 chars of plain/raw, 128 attachments, 4096 documents are accepted."""
    body = valid_raw()
    raw_email = body["documents"][0]["raw_email"]
    raw_email["body"]["plain"] = "a" * 65_536
    raw_email["headers"]["raw"] = "a" * 65_536
    raw_email["attachments"] = [{"name": "a" * 256, "size": 0, "content_type": "b" * 256}] * 128
    body["documents"] = [copy.deepcopy(body["documents"][0]) for _ in range(2)] + [
        body["documents"][1]
    ] * 4094
    validate_predict_raw_emails(body, known_labels=KNOWN)


def test_unknown_labels_are_accepted_without_a_taxonomy() -> None:
    """Without known_labels the unknown-label check is skipped (payload-only validation)."""
    body = valid_raw()
    body["labels"] = [{"name": ["Whatever"]}]
    validate_predict_raw_emails(body)


def test_threshold_auto_and_edges_are_valid() -> None:
    """threshold "auto", 0 and 1 are all valid; integers count as numbers."""
    for value in ("auto", 0, 1, 0.0, 1.0):
        body = valid_raw()
        body["threshold"] = value
        validate_predict_raw_emails(body, known_labels=KNOWN)


M0 = "documents[0].messages[0]"
PREDICT_CASES: list[tuple[str, Mutation, int, str]] = [
    ("unknown-top", _set("transform_tag", "generic.0.X"), 400, "transform_tag: unknown field"),
    ("documents-empty", _set("documents", []), 400, "documents: needs at least 1"),
    ("doc-unknown", _set("documents[0].id", "x"), 400, "documents[0].id: unknown field"),
    ("messages-missing", _del("documents[0].messages"), 400, "documents[0].messages: required"),
    ("messages-empty", _set("documents[0].messages", []), 422, "messages: needs at least 1"),
    ("message-unknown", _set(f"{M0}.x", 1), 400, "messages[0].x: unknown field"),
    ("body-missing", _del(f"{M0}.body"), 400, "messages[0].body: required field missing"),
    ("body-text-missing", _set(f"{M0}.body", {}), 400, "messages[0].body.text: required"),
    ("body-text-long", _set(f"{M0}.body.text", "a" * 65537), 422, "body.text: longer than 65536"),
    ("subject-type", _set(f"{M0}.subject", "x"), 400, "messages[0].subject: expected an object"),
    ("from-empty", _set(f"{M0}.from", ""), 422, "messages[0].from: must not be empty"),
    ("from-long", _set(f"{M0}.from", "a" * 513), 422, "messages[0].from: longer than 512"),
    ("to-type", _set(f"{M0}.to", "bob"), 400, "messages[0].to: expected an array"),
    ("to-item", _set(f"{M0}.to", [""]), 422, "messages[0].to[0]: must not be empty"),
    ("language-long", _set(f"{M0}.language", "a" * 9), 422, "language: longer than 8"),
    ("text-format", _set("documents[0].text_format", "html"), 422, "text_format: must be"),
    ("props", _set("documents[0].user_properties", {"x": 1}), 422, "key must be"),
    ("threshold", _set("threshold", 7), 422, "threshold: must be between 0 and 1"),
    ("labels-unknown", _set("labels", [{"name": ["Nope"]}]), 422, "labels[0].name: unknown"),
]


@pytest.mark.parametrize(
    ("mutate", "status", "text"), [c[1:] for c in PREDICT_CASES], ids=[c[0] for c in PREDICT_CASES]
)
def test_predict_rejects_each_rule_with_status_and_path(
    mutate: Mutation, status: int, text: str
) -> None:
    """Each invalid predict (comments format) body gets its status and path."""
    body = valid_predict()
    mutate(body)
    with pytest.raises(RequestInvalid) as info:
        validate_predict(body, known_labels=KNOWN)
    assert info.value.status == status, info.value.message
    assert text in info.value.message


COMMENTS_CASES: list[tuple[str, Mutation, int, str]] = [
    ("uids-missing", _del("uids"), 400, "uids: required field missing"),
    ("uids-empty", _set("uids", []), 400, "uids: needs at least 1"),
    ("uids-too-many", _set("uids", ["18ba5ce699f8da1f.1"] * 4097), 422, "uids: more than 4096"),
    ("uid-type", _set("uids", [1]), 400, "uids[0]: expected a string"),
    ("uid-no-source", _set("uids", ["0001"]), 422, "uids[0]: must be"),
    ("uid-short-source", _set("uids", ["18ba5ce6.0001"]), 422, "uids[0]: must be"),
    ("uid-upper-hex", _set("uids", ["18BA5CE699F8DA1F.1"]), 422, "uids[0]: must be"),
    ("uid-bad-comment", _set("uids", ["18ba5ce699f8da1f.a b"]), 422, "uids[0]: must be"),
    ("unknown-field", _set("documents", []), 400, "documents: unknown field"),
    ("threshold", _set("threshold", "x"), 422, "threshold: expected a number"),
]


@pytest.mark.parametrize(
    ("mutate", "status", "text"),
    [c[1:] for c in COMMENTS_CASES],
    ids=[c[0] for c in COMMENTS_CASES],
)
def test_predict_comments_rejects_each_rule_with_status_and_path(
    mutate: Mutation, status: int, text: str
) -> None:
    """Each invalid predict-comments body gets its status and path."""
    body = valid_comments()
    mutate(body)
    with pytest.raises(RequestInvalid) as info:
        validate_predict_comments(body, known_labels=KNOWN)
    assert info.value.status == status, info.value.message
    assert text in info.value.message
