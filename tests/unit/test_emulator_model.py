"""The emulator's keyword model, entities, offsets and the in-process provider."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.config import ClassifierConfig, LabelThreshold
from gateway.documents import RawEmailDocument
from gateway.emulator import EmulatorClassifier, KeywordModel
from gateway.emulator import _entities as entities_module
from gateway.emulator._entities import find_entities, luhn_ok
from gateway.emulator._inputs import raw_email_docs
from gateway.emulator._model import DocText, Selection, TextPart
from gateway.emulator._taxonomy import load_taxonomy
from gateway.emulator._text import email_text, html_to_text
from gateway.errors import ConfigError, InvalidRequestError, NotFoundError

MODEL = KeywordModel.default()
# The taxonomy every part agrees on (/work/interfaces.md), parents included.
INTERFACE_LABELS = {
    "Finance",
    "Finance > Invoice",
    "Finance > Payment Reminder",
    "Finance > Refund",
    "Customer Service",
    "Customer Service > Complaint",
    "Customer Service > Order Status",
    "Customer Service > Cancellation",
    "IT",
    "IT > Access Request",
    "IT > Incident",
    "HR",
    "HR > Leave Request",
    "Legal",
    "Legal > Contract",
    "Compliance",
    "Compliance > Personal Data",
    "Compliance > Payment Card Data",
    "Compliance > Regulated Advice",
    "Notification",
    "Notification > Out of Office",
    "Notification > Newsletter",
    "Urgent",
}


def doc(body: str, subject: str = "", attachments: tuple[str, ...] = ()) -> DocText:
    return DocText(
        parts=(TextPart(0, "subject", subject), TextPart(0, "body", body)), extra=attachments
    )


def labels_of(
    body: str, subject: str = "", *, version: int = 7, selection: Selection | None = None
) -> dict[str, dict[str, Any]]:
    payload = MODEL.predict_texts(
        [doc(body, subject)], version=version, selection=selection or Selection()
    )
    return {" > ".join(lb["name"]): lb for lb in payload["predictions"][0]}


def test_probability_grows_with_keyword_hits() -> None:
    """One hit ~0.6, two ~0.8, three ~0.9: more evidence, more confidence."""
    one = labels_of("we want a refund")["Finance > Refund"]["probability"]
    two = labels_of("refund please, reimburse me")["Finance > Refund"]["probability"]
    three = labels_of("refund, reimburse, chargeback")["Finance > Refund"]["probability"]
    assert 0.55 <= one <= 0.7
    assert 0.75 <= two <= 0.85
    assert three >= 0.87
    assert one < two < three <= 0.99


def test_predictions_are_deterministic() -> None:
    """The same document gives exactly the same response twice (no randomness)."""
    body = "Urgent: invoice INV-2024001 overdue, card 4111 1111 1111 1111. Thanks!"
    first = MODEL.predict_texts([doc(body, "Invoice")], version=7, selection=Selection(0.0))
    second = MODEL.predict_texts([doc(body, "Invoice")], version=7, selection=Selection(0.0))
    assert first == second


def test_parents_are_returned_as_their_own_entries_with_the_max_of_children() -> None:
    """Finance is returned next to Finance > Invoice, with the children's max probability."""
    labels = labels_of("invoice attached, and a refund for the other invoice")
    assert "Finance" in labels
    children = [
        labels["Finance > Invoice"]["probability"],
        labels["Finance > Refund"]["probability"],
    ]
    assert labels["Finance"]["probability"] == max(children)


def test_default_threshold_hides_labels_without_evidence() -> None:
    """At the default 0.25 only labels with a keyword hit come back."""
    assert set(labels_of("please find the invoice")) == {"Finance", "Finance > Invoice"}
    assert labels_of("lunch on friday?") == {}


def test_threshold_zero_returns_the_whole_taxonomy() -> None:
    """threshold 0 includes every label, as the API documents for 0.0."""
    labels = labels_of("lunch on friday?", selection=Selection(threshold=0.0))
    assert set(labels) == {lb.name for lb in MODEL.taxonomy.labels}
    assert all(lb["probability"] < 0.1 for lb in labels.values())


def test_staging_is_slightly_more_confident_than_live() -> None:
    """Version 8 (staging) gives the same labels with a small boost."""
    live = labels_of("refund please", version=7)
    staging = labels_of("refund please", version=8)
    assert set(live) == set(staging)
    boost = staging["Finance > Refund"]["probability"] - live["Finance > Refund"]["probability"]
    assert 0.0 < boost <= 0.05


def test_labels_filter_restricts_output_with_per_label_thresholds() -> None:
    """labels= returns only the listed labels; each uses its own threshold or the top-level."""
    body = "Urgent: refund for invoice, asap"
    sel = Selection(
        threshold=0.25, labels={("Finance", "Refund"): 0.95, ("Urgent",): None, ("HR",): None}
    )
    labels = labels_of(body, selection=sel)
    assert set(labels) == {"Urgent"}  # Refund is ~0.6 < 0.95; HR has no evidence
    sel = Selection(threshold=0.25, labels={("Finance", "Refund"): 0.5})
    assert set(labels_of(body, selection=sel)) == {"Finance > Refund"}


def test_auto_threshold_lists_the_cutoffs_each_label_meets() -> None:
    """threshold "auto": filtered at high_recall; auto_thresholds lists every cut met."""
    labels = labels_of("refund", selection=Selection(threshold="auto"))
    assert labels["Finance > Refund"]["auto_thresholds"] == ["high_recall", "balanced"]
    strong = labels_of("refund reimburse chargeback", selection=Selection(threshold="auto"))
    assert strong["Finance > Refund"]["auto_thresholds"] == [
        "high_recall",
        "balanced",
        "high_precision",
    ]
    assert "auto_thresholds" not in labels_of("refund")["Finance > Refund"]


def test_interface_keywords_map_to_their_labels() -> None:
    """The keyword examples of interfaces.md land on the agreed labels."""
    cases = {
        "Your invoice": "Finance > Invoice",
        "I want a refund": "Finance > Refund",
        "This is a complaint": "Customer Service > Complaint",
        "This is unacceptable": "Customer Service > Complaint",
        "I am out of office until Monday": "Notification > Out of Office",
        "Click to unsubscribe": "Notification > Newsletter",
        "Need this asap": "Urgent",
        "password reset please": "IT > Access Request",
        "the server is down": "IT > Incident",
        "copy of my passport": "Compliance > Personal Data",
        "my date of birth is": "Compliance > Personal Data",
        "IBAN DE89 3704 0044 0532 0130 00": "Compliance > Personal Data",
        "card 4111 1111 1111 1111": "Compliance > Payment Card Data",
        "order ORD-123456 has not arrived": "Customer Service > Order Status",
        "annual leave request": "HR > Leave Request",
        "please sign the contract": "Legal > Contract",
    }
    for text, label in cases.items():
        assert label in labels_of(text), text


def test_keywords_match_whole_words_case_insensitively() -> None:
    """ "DOWN" matches IT > Incident, "download" does not."""
    assert "IT > Incident" in labels_of("Everything is DOWN")
    assert "IT > Incident" not in labels_of("please download the file")


def test_attachment_names_count_as_evidence() -> None:
    """An attachment called invoice.pdf is a hit for Finance > Invoice."""
    payload = MODEL.predict_texts(
        [doc("see attached", attachments=("invoice.pdf",))], version=7, selection=Selection()
    )
    assert ["Finance", "Invoice"] in [lb["name"] for lb in payload["predictions"][0]]


def test_sentiment_is_negative_for_angry_mail_and_copied_on_labels() -> None:
    """Negative words give a negative document sentiment and per-label sentiment."""
    payload = MODEL.predict_texts(
        [doc("This is unacceptable, I am angry and disappointed. Refund now.")],
        version=7,
        selection=Selection(),
    )
    total = payload["sentiment"][0]["total"]
    assert total < -0.5
    assert all(lb["sentiment"] == total for lb in payload["predictions"][0])
    tone = {p["property_name"]: p for p in payload["label_properties"][0]}
    assert tone["tone"]["value"] < 0
    assert set(tone) == {"tone", "quality_of_service"}
    assert all(len(p["property_id"]) == 16 for p in tone.values())


def test_neutral_mail_has_zero_sentiment_and_no_label_sentiment() -> None:
    """Without sentiment words: total 0.0 and labels carry no sentiment key."""
    payload = MODEL.predict_texts([doc("invoice attached")], version=7, selection=Selection())
    assert payload["sentiment"] == [{"total": 0.0}]
    assert all("sentiment" not in lb for lb in payload["predictions"][0])
    positive = MODEL.predict_texts([doc("thank you, great")], version=7, selection=Selection())
    assert positive["sentiment"][0]["total"] > 0.5


def test_response_has_one_entry_per_document_in_order() -> None:
    """predictions, entities, label_properties and sentiment are aligned with documents."""
    docs = [doc("refund"), doc("nothing here"), doc("urgent ORD-000001")]
    payload = MODEL.predict_texts(docs, version=7, selection=Selection())
    for key in ("predictions", "entities", "label_properties", "sentiment"):
        assert len(payload[key]) == 3
    assert payload["predictions"][1] == []
    assert payload["entities"][2][0]["formatted_value"] == "ORD-000001"
    assert payload["model"] == {"version": 7, "time": MODEL.taxonomy.versions[7][0]}


# -- entities and offsets --------------------------------------------------------------


def _utf16_bytes(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le"))


def test_entity_offsets_match_the_seed_example() -> None:
    """ASCII text: utf16 bytes are 2 x chars, as in the docs ("Bob" 3..6 -> 6..12)."""
    text = "Hi ORD-123456, thanks"
    (ent,) = find_entities(text, "body")
    assert (ent.char_start, ent.char_end) == (3, 13)
    assert (ent.utf16_byte_start, ent.utf16_byte_end) == (6, 26)


def test_entity_offsets_with_accents_and_emoji_before_the_match() -> None:
    """Code point offsets index the str; a non-BMP emoji shifts UTF-16 bytes by 4, not 2."""
    text = "Héllo 😀😀 café: order ORD-654321 ok"
    (ent,) = find_entities(text, "body")
    assert text[ent.char_start : ent.char_end] == "ORD-654321"
    assert ent.char_start == text.index("ORD-654321") == 21
    # 21 code points before it, two of them astral (2 UTF-16 units each): 23 units = 46 bytes.
    assert ent.utf16_byte_start == 46 == _utf16_bytes(text, ent.char_start)
    assert ent.utf16_byte_end == 66 == _utf16_bytes(text, ent.char_end)
    encoded = text.encode("utf-16-le")
    assert encoded[ent.utf16_byte_start : ent.utf16_byte_end].decode("utf-16-le") == "ORD-654321"


def test_emoji_inside_a_span_widens_only_its_end() -> None:
    """An astral char between two entities moves the second one's bytes by 4."""
    text = "INV-1234 🎉 INV-5678"
    first, second = find_entities(text, "subject")
    assert (first.utf16_byte_start, first.utf16_byte_end) == (0, 16)
    assert second.char_start == 11
    assert second.utf16_byte_start == 2 * 11 + 2 == _utf16_bytes(text, 11)
    assert first.content_part == second.content_part == "subject"


def test_entity_kinds_and_formatted_values() -> None:
    """Each regex entity kind is found with a normalised formatted_value."""
    text = (
        "Order ORD-123456, invoice inv-20240001, pay €1,200.00 or $50 or 120 EUR "
        "to DE89 3704 0044 0532 0130 00 from Jane.Doe@Example.com, card 4111-1111-1111-1111."
    )
    found = {(e.kind, e.formatted_value) for e in find_entities(text, "body")}
    assert found == {
        ("order-number", "ORD-123456"),
        ("invoice-number", "INV-20240001"),
        ("money", "1200.00 EUR"),
        ("money", "50.00 USD"),
        ("money", "120.00 EUR"),
        ("iban", "DE89370400440532013000"),
        ("email-address", "jane.doe@example.com"),
        ("credit-card", "4111111111111111"),
    }


def test_only_luhn_valid_numbers_are_cards_and_only_mod97_valid_ibans() -> None:
    """4111 1111 1111 1112 is not a card; a mistyped IBAN is not an IBAN."""
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert find_entities("card 4111 1111 1111 1112", "body") == []
    assert find_entities("DE89 3704 0044 0532 0130 01", "body") == []


def test_entity_json_has_the_full_predicted_entity_shape() -> None:
    """id (stable 16 hex), name, kind, formatted_value, probability null, span, spans."""
    (ent,) = find_entities("ORD-123456", "body")
    data = ent.to_json()
    assert set(data) == {
        "id",
        "name",
        "kind",
        "formatted_value",
        "probability",
        "span",
        "spans",
        "capture_ids",
    }
    assert len(data["id"]) == 16 and int(data["id"], 16) >= 0
    assert data["id"] == find_entities("ORD-123456", "body")[0].to_json()["id"]
    assert data["probability"] is None and data["capture_ids"] == []
    assert data["spans"] == [data["span"]]
    assert data["span"]["message_index"] == 0


# -- the text read from raw emails -----------------------------------------------------


def test_subject_is_unfolded_and_decoded_from_raw_headers() -> None:
    """A folded, RFC 2047-encoded Subject is read as the decoded one-line value."""
    raw_email = {
        "headers": {"raw": "From: a@b.c\r\nSubject: =?utf-8?q?Caf=C3=A9?=\r\n invoice\r\nTo: x@y"},
        "body": {"plain": "x"},
    }
    text = email_text(raw_email)
    assert text.subject == "Café invoice"
    assert text.sender == "a@b.c"


def test_html_body_is_read_without_tags() -> None:
    """With no plain part the HTML is stripped of tags, scripts and entities."""
    assert html_to_text("<p>Refund&nbsp;please</p><script>x()</script><br>ok") == (
        "Refund\xa0please\n\nok"
    )
    (d,) = raw_email_docs(
        {
            "documents": [
                {
                    "raw_email": {
                        "headers": {"parsed": {"subject": "Hi"}},
                        "body": {"html": "<b>ORD-111111</b>"},
                    }
                }
            ]
        }
    )
    assert [p.text for p in d.parts] == ["Hi", "ORD-111111"]


# -- predict-comments, validation ------------------------------------------------------


def test_predict_uids_is_deterministic_per_uid_with_parents() -> None:
    """predict-comments fakes: the same uid always gets the same labels, parents included."""
    uids = [f"18ba5ce699f8da1f.{n:04d}" for n in range(20)]
    first = MODEL.predict_uids(uids, version=7, selection=Selection(threshold=0.0))
    again = MODEL.predict_uids(uids, version=7, selection=Selection(threshold=0.0))
    assert first == again
    assert [p["uid"] for p in first["predictions"]] == uids
    for pred in first["predictions"]:
        names = {tuple(lb["name"]) for lb in pred["labels"]}
        assert names
        assert all(name[:-1] in names for name in names if len(name) > 1)


def test_validation_lists_the_whole_taxonomy_with_parts() -> None:
    """validation: every label (parents too) as {name: "A > B", parts}, num_labels matches."""
    data = MODEL.validation(7)["validation"]
    names = {lb["name"] for lb in data["labels"]}
    assert names == INTERFACE_LABELS
    assert len(data["labels"]) == data["num_labels"] == 23
    for lb in data["labels"]:
        assert lb["name"] == " > ".join(lb["parts"])
    assert data["version"] == 7


def test_versions_resolve_live_staging_and_only_known_integers() -> None:
    """live=7, staging=8, latest only where allowed; other versions are unknown."""
    assert MODEL.resolve_version("live") == 7
    assert MODEL.resolve_version("staging") == 8
    assert MODEL.resolve_version("7") == 7
    assert MODEL.resolve_version("latest") is None
    assert MODEL.resolve_version("latest", allow_latest=True) == 8
    for bad in ("9", "07", "-7", "x", ""):
        assert MODEL.resolve_version(bad) is None


def test_a_custom_taxonomy_file_is_served(tmp_path: Path) -> None:
    """--taxonomy: a small YAML with its own labels; parents are added automatically."""
    path = tmp_path / "tax.yaml"
    path.write_text("labels:\n  - name: Sales > Lead\n    keywords: [quote]\n")
    model = KeywordModel.from_path(path)
    assert model.label_names == {("Sales",), ("Sales", "Lead")}
    payload = model.predict_texts([doc("a quote please")], version=7, selection=Selection())
    assert [lb["name"] for lb in payload["predictions"][0]] == [["Sales"], ["Sales", "Lead"]]


def test_a_broken_taxonomy_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """Bad YAML or a bad entity kind raises ConfigError with the file name."""
    path = tmp_path / "bad.yaml"
    path.write_text("labels:\n  - name: A\n    entities: [ssn]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_taxonomy(path)
    path.write_text("labels: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_taxonomy(path)


# -- the in-process provider -----------------------------------------------------------


def raw_doc(plain: str, subject: str = "Hello") -> RawEmailDocument:
    return {
        "raw_email": {
            "headers": {"raw": f"Subject: {subject}\r\nMessage-ID: <1@x>"},
            "body": {"plain": plain},
            "attachments": [],
        },
        "user_properties": {},
    }


async def test_provider_returns_a_prediction_batch_in_process() -> None:
    """EmulatorClassifier predicts without HTTP and says it is not a real model."""
    classifier = EmulatorClassifier(ClassifierConfig(provider="emulator"))
    batch = await classifier.predict_raw_emails(
        [raw_doc("refund please, order ORD-123456"), raw_doc("hi")]
    )
    assert "NOT a real" in classifier.description and "keyword" in classifier.description
    assert batch.model_version == 7
    assert len(batch.predictions) == 2
    first = batch.predictions[0]
    assert first.label("Finance > Refund") is not None
    assert first.label("Finance") is not None
    assert first.entities[0].kind == "order-number"
    assert first.sentiment == 0.0
    assert batch.predictions[1].labels == ()
    await classifier.aclose()


async def test_provider_applies_config_threshold_labels_and_version() -> None:
    """threshold, labels and model_version of the config shape the answer."""
    config = ClassifierConfig(
        provider="emulator",
        model_version="staging",
        threshold="auto",
        labels=[LabelThreshold(name="Urgent")],
    )
    batch = await EmulatorClassifier(config).predict_raw_emails([raw_doc("urgent refund")])
    (label,) = batch.predictions[0].labels
    assert label.name == ("Urgent",)
    assert label.auto_thresholds == ("high_recall", "balanced")
    assert batch.model_version == 8


async def test_provider_rejects_invalid_payloads_like_the_api() -> None:
    """A payload bug (too long a body) raises InvalidRequestError with the 422 and path."""
    classifier = EmulatorClassifier(ClassifierConfig(provider="emulator"))
    with pytest.raises(InvalidRequestError) as info:
        await classifier.predict_raw_emails([raw_doc("ok"), raw_doc("x" * 70_000)])
    assert info.value.status == 422
    assert "documents[1].raw_email.body.plain" in str(info.value)
    bad: Any = raw_doc("nan")
    bad["user_properties"] = {"number:Score": float("nan")}
    with pytest.raises(InvalidRequestError, match="JSON"):
        await classifier.predict_raw_emails([bad])


def test_provider_refuses_a_version_the_emulator_does_not_serve() -> None:
    """model_version 3 -> NotFoundError, as the API's 404."""
    with pytest.raises(NotFoundError):
        EmulatorClassifier(ClassifierConfig(provider="emulator", model_version=3))


async def test_provider_with_no_documents_returns_an_empty_batch() -> None:
    """An empty sequence is not sent (the API refuses empty batches)."""
    batch = await EmulatorClassifier(ClassifierConfig(provider="emulator")).predict_raw_emails([])
    assert batch.predictions == ()


def test_keywords_match_word_sequences_across_case_and_hyphens() -> None:
    """ "Out-of-Office" and "OUT OF OFFICE" both hit Notification > Out of Office."""
    for text in ("Auto: Out-of-Office", "I AM OUT OF OFFICE", "out of\noffice"):
        assert "Notification > Out of Office" in labels_of(text), text
    assert "Notification > Out of Office" not in labels_of("stout offices")


_ENTITY_BITS = [
    "ORD-123456", "ord-654321", "INV-20240", "inv-1234", "ınv-1234", "İNV-12345", "a@b.co",
    "x.y+z@mail.example.org", "DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432",
    "4111 1111 1111 1111", "4012-8888-8888-1881", "٤١١١١١١١١١١١١١١١", "€1,200.00", "$50",
    "120 EUR", "99.5 CHF", "£3", " ", "\n", "-", ".", ",", "0", "7", "é", "text", "Ord-",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_ENTITY_BITS), max_size=25).map("".join))
def test_entity_prefilters_never_change_what_is_found(text: str) -> None:
    """The substring checks that skip a pattern only skip patterns that find nothing."""
    with_filters = find_entities(text, "body")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(entities_module, "_may_match", lambda kind, text: True)
        without = find_entities(text, "body")
    assert with_filters == without


@settings(max_examples=60, deadline=None)
@given(
    bodies=st.lists(
        st.sampled_from(
            [
                "invoice INV-123456 overdue, refund please",
                "angry customer: unacceptable outage, card 4111 1111 1111 1111",
                "out of office until monday",
                "thank you, great service",
                "plain words",
            ]
        ),
        min_size=1,
        max_size=12,
    ),
    version=st.sampled_from([7, 8]),
)
def test_repeated_texts_answer_exactly_as_a_fresh_model_does(
    bodies: list[str], version: int
) -> None:
    """The emulator's memo of scored texts changes no byte of any answer."""
    warm = KeywordModel.default()
    docs = [doc(body, "Subject") for body in bodies]
    for _ in range(2):
        answer = warm.predict_texts(docs, version=version, selection=Selection(0.0))
    fresh = KeywordModel.default().predict_texts(docs, version=version, selection=Selection(0.0))
    assert answer == fresh


def test_the_memo_of_scored_texts_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.emulator import _model as model_module

    monkeypatch.setattr(model_module, "MEMO_ENTRIES", 3)
    warm = KeywordModel.default()
    for i in range(10):
        warm.predict_texts([doc(f"invoice {i}")], version=7, selection=Selection(0.0))
    assert len(warm._memo) == 3


def _count_every_position(text: str, known: frozenset[tuple[str, ...]]) -> dict[Any, int]:
    """The plain count: every position, every keyword length (count_keywords's oracle)."""
    words = re.findall(r"\w+", text.lower())
    counts: dict[Any, int] = {}
    for n in {len(k) for k in known}:
        for i in range(len(words) - n + 1):
            key = tuple(words[i : i + n])
            if key in known:
                counts[key] = counts.get(key, 0) + 1
    return counts


_TAXONOMY_KEYS = frozenset(MODEL.taxonomy.all_keywords())
_KEY_TEXTS = sorted(" ".join(k) for k in _TAXONOMY_KEYS)
_WORDS_OF_KEYS = sorted({w for k in _TAXONOMY_KEYS for w in k})


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_KEY_TEXTS),  # whole keywords, multi-word ones included
            st.sampled_from(_WORDS_OF_KEYS),  # their words alone: partial matches
            st.text(max_size=6),
        ),
        max_size=80,
    ).map(" ".join)
)
def test_keyword_counts_are_those_of_every_position_and_length(text: str) -> None:
    """The first-word index counts exactly what trying every position and length counts,
    on text made mostly of the taxonomy's own words (so multi-word keywords do occur)."""
    assert MODEL.taxonomy.count_keywords(text) == _count_every_position(text, _TAXONOMY_KEYS)
