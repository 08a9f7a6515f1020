"""Property: for random predictions and random rule sets built through the loader,
evaluation never raises and is deterministic."""

from __future__ import annotations

from typing import Any, Literal

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.context import Attachment, ClassificationStatus, MessageContext
from gateway.predictions import DocumentPrediction
from gateway.rules import parse_rules, rules_json_schema

try:
    import jsonschema

    SCHEMA: Any = jsonschema.Draft202012Validator(rules_json_schema())
except ImportError:  # pragma: no cover - jsonschema is in the dev extra
    SCHEMA = None

# The taxonomy every part agrees on (/work/interfaces.md).
LABELS = [
    "Finance", "Finance > Invoice", "Finance > Payment Reminder", "Finance > Refund",
    "Customer Service", "Customer Service > Complaint", "Customer Service > Order Status",
    "Customer Service > Cancellation", "IT", "IT > Access Request", "IT > Incident",
    "HR", "HR > Leave Request", "Legal", "Legal > Contract", "Compliance",
    "Compliance > Personal Data", "Compliance > Payment Card Data",
    "Compliance > Regulated Advice", "Notification", "Notification > Out of Office",
    "Notification > Newsletter", "Urgent",
]  # fmt: skip
PARENTS = sorted({name.split(" > ")[0] for name in LABELS if " > " in name})
ENTITY_KINDS = ["order-number", "invoice-number", "iban", "credit-card", "email-address", "money"]
ENTITY_VALUES = ["ORD-123456", "INV-20240117", "DE89370400440532013000", "4111111111111111",
                 "a@example.com", "€1,200.00", "$50", "120 EUR"]  # fmt: skip
PROPERTIES = ["tone", "quality_of_service"]
ADDRESSES = ["alice@customer.example", "BOB@Example.com", "x@eu.example.com", "", "root@localhost"]

SIZE_TEXT: dict[int, str] = {1024: "1KB", 10 * 1024 * 1024: "10MB"}
unit = st.floats(0, 1, allow_nan=False)
signed = st.floats(-1, 1, allow_nan=False)


def bounds(values: st.SearchStrategy[float]) -> st.SearchStrategy[dict[str, float]]:
    """{above, below} with at least one bound and above < below."""

    def build(pair: tuple[float | None, float | None]) -> dict[str, float]:
        low, high = pair
        out: dict[str, float] = {}
        if low is not None and high is not None and low >= high:
            low, high = None, high
        if low is not None:
            out["above"] = low
        if high is not None:
            out["below"] = high
        return out or {"below": 1}

    return st.tuples(st.none() | values, st.none() | values).map(build)


def label_condition() -> st.SearchStrategy[dict[str, Any]]:
    names = st.sampled_from(LABELS) | st.sampled_from(PARENTS).map(lambda p: f"{p} > *")

    def build(t: tuple[str, float | None, float | None]) -> dict[str, Any]:
        name, low, high = t
        out: dict[str, Any] = {"label": name}
        if low is not None:
            out["min_probability"] = low
        if high is not None:
            out["max_probability"] = max(high, low or 0.0)
        return out

    return st.tuples(names, st.none() | unit, st.none() | unit).map(build)


LEAVES = st.one_of(
    label_condition(),
    bounds(signed).map(lambda b: {"sentiment": b}),
    st.fixed_dictionaries(
        {},
        optional={
            "kind": st.sampled_from(ENTITY_KINDS),
            "value": st.sampled_from(["^ORD", r"\d{4}", "EUR$", "."]),
        },
    )
    .filter(bool)
    .map(lambda e: {"entity": e}),
    st.tuples(st.sampled_from(PROPERTIES), bounds(signed)).map(
        lambda t: {"label_property": {"name": t[0], **t[1]}}
    ),
    st.sampled_from(
        [
            {"header": {"name": "Subject", "matches": "(?i)invoice"}},
            {"header": {"name": "subject", "contains": "urgent"}},
            {"header": {"name": "X-Spam", "exists": True}},
            {"header": {"name": "List-Id", "exists": False}},
        ]
    ),
    st.sampled_from(["@example.com", "*@*.example.com", "alice@customer.example", "<>"]).map(
        lambda p: {"from": p}
    ),
    st.lists(st.sampled_from(["@example.com", "bob@example.com", "*@customer.*"]), min_size=1).map(
        lambda p: {"to": p}
    ),
    bounds(st.sampled_from([0, 1000, 1024, 10 * 1024 * 1024])).map(
        lambda b: {"size": {k: SIZE_TEXT.get(int(v), v) for k, v in b.items()}}
    ),
    st.sampled_from(
        [{"attachment": {"name": "*.pdf"}}, {"attachment": {"content_type": "image/*"}}]
    ),
    st.booleans().map(lambda b: {"unclassified": b}),
)


CONDITIONS = st.recursive(
    LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"all": c}),
        st.lists(inner, min_size=1, max_size=3).map(lambda c: {"any": c}),
        inner.map(lambda c: {"not": c}),
    ),
    max_leaves=6,
)

ACTIONS = st.sampled_from(
    [
        {"add_header": {"X-Triage": "{rule}: {top_label} {top_probability}"}},
        {"add_header": {"X-Labels": "{labels}", "X-Model": "{model_version}"}},
        {"prefix_subject": "[Tag] "},
        {"bcc": ["copy@example.com", "COPY@example.com"]},
        {"redirect": ["team@example.com"]},
        {"quarantine": "quarantine@example.com"},
        {"reject": "Rejected by policy"},
        {"defer": "Try later"},
        {"discard": True},
    ]
)


@st.composite
def rule_files(draw: st.DrawFn) -> dict[str, Any]:
    count = draw(st.integers(1, 8))
    rules = []
    for index in range(count):
        rule: dict[str, Any] = {"name": f"rule-{index}"}
        when = draw(st.none() | CONDITIONS)
        if when is not None:
            rule["when"] = when
        rule["actions"] = draw(st.lists(ACTIONS, max_size=3))
        for key in ("stop", "enabled", "audit"):
            flag = draw(st.none() | st.booleans())
            if flag is not None:
                rule[key] = flag
        rules.append(rule)
    doc: dict[str, Any] = {"rules": rules}
    if draw(st.booleans()):
        doc["audit"] = draw(st.booleans())
    return doc


@st.composite
def contexts(draw: st.DrawFn) -> MessageContext:
    classified = draw(st.booleans())
    prediction = None
    if classified:
        names = draw(st.lists(st.sampled_from(LABELS), unique=True, max_size=6))
        prediction = DocumentPrediction.model_validate(
            {
                "labels": [
                    {"name": n, "probability": draw(unit), "sentiment": draw(st.none() | signed)}
                    for n in names
                ],
                "entities": [
                    {"name": k, "kind": k, "formatted_value": draw(st.sampled_from(ENTITY_VALUES))}
                    for k in draw(st.lists(st.sampled_from(ENTITY_KINDS), max_size=3))
                ],
                "label_properties": [
                    {"property_name": p, "value": draw(signed)}
                    for p in draw(st.lists(st.sampled_from(PROPERTIES), unique=True))
                ],
                "sentiment": draw(st.none() | signed),
            }
        )
    status = (
        ClassificationStatus("classified")
        if classified
        else draw(
            st.sampled_from(
                [
                    ClassificationStatus("unclassified", "timeout"),
                    ClassificationStatus("skipped", "bounce"),
                ]
            )
        )
    )
    return MessageContext(
        mail_from=draw(st.sampled_from(ADDRESSES)),
        rcpt_tos=tuple(draw(st.lists(st.sampled_from(ADDRESSES[:3]), min_size=1, max_size=3))),
        headers=tuple(
            draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["Subject", "X-Spam", "List-Id", "To"]),
                        st.text(max_size=20),
                    ),
                    max_size=4,
                )
            )
        ),
        size=draw(st.integers(0, 20 * 1024 * 1024)),
        attachments=tuple(
            Attachment(name, ctype, 10)
            for name, ctype in draw(
                st.lists(
                    st.tuples(
                        st.sampled_from(["a.pdf", "B.PNG", "c"]),
                        st.sampled_from(["application/pdf", "image/png", "text/plain"]),
                    ),
                    max_size=2,
                )
            )
        ),
        prediction=prediction,
        status=status,
        model_version=draw(st.none() | st.sampled_from([7, 8])),
    )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=rule_files(), ctx=contexts(), threshold=unit, audit_mode=st.booleans())
def test_evaluation_never_raises_and_is_deterministic(
    doc: dict[str, Any], ctx: MessageContext, threshold: float, audit_mode: bool
) -> None:
    """Random rules x random predictions: no exception, same input -> equal Decision."""
    if SCHEMA is not None:
        SCHEMA.validate(doc)  # what the loader accepts, the published schema accepts
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    mode: Literal["audit", "enforce"] = "audit" if audit_mode else "enforce"
    ruleset = parse_rules(text, file="random.yaml", mode=mode)
    first = ruleset.evaluate(ctx, default_threshold=threshold)
    again = ruleset.evaluate(ctx, default_threshold=threshold)
    reloaded = parse_rules(text, file="random.yaml", mode=mode)
    assert first == again == reloaded.evaluate(ctx, default_threshold=threshold)
    assert len(first.verdicts) == len(doc["rules"])
    assert not any(v.why.startswith("error:") for v in first.verdicts)
    assert first.verdict in ("deliver", "reject", "defer", "discard", "quarantine")
    assert (first.reply is not None) == (first.verdict in ("reject", "defer"))
    if ruleset.audit:
        assert (first.verdict, first.recipients, first.add_headers) == ("deliver", ctx.rcpt_tos, ())
        assert first.rules_hit == ()
