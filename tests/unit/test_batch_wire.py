"""The frames between a worker and the shared batcher: encode_reply writes its JSON piece
by piece, and must give the octets the WireReply model gives; the worker reads them back."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.classify import _batch_wire as batch_wire
from gateway.classify import decode_request
from gateway.classify._batch_wire import WireError, WireReply, encode_request
from gateway.errors import (
    ClassifierError,
    InvalidRequestError,
    MalformedResponseError,
    RateLimitedError,
)
from gateway.predictions import (
    DocumentPrediction,
    Entity,
    Label,
    LabelProperty,
    ModelInfo,
    PredictionBatch,
    TextSpan,
)


def reference_reply(
    request_id: int,
    *,
    batch: PredictionBatch | None = None,
    error: BaseException | None = None,
    events: list[list[Any]],
    circuits: dict[str, list[Any]],
) -> bytes:
    """encode_reply as it was: the model, dumped."""
    if batch is not None:
        batch = PredictionBatch(predictions=batch.predictions, model=batch.model)
    reply = WireReply(
        id=request_id,
        batch=batch,
        error=None if error is None else WireError.of(error),
        events=events,
        circuits=circuits,
    )
    return batch_wire.frame(reply.model_dump_json(exclude_defaults=True).encode())


TEXT = st.text(max_size=8)
PROBABILITY = st.floats(0.0, 1.0)
OPTIONAL_FLOAT = st.none() | st.floats(-1.0, 1.0)
SPANS = st.builds(
    TextSpan,
    content_part=st.sampled_from(["body", "subject"]),
    message_index=st.integers(0, 3),
    char_start=st.integers(0, 99),
    char_end=st.integers(0, 99),
    utf16_byte_start=st.none() | st.integers(0, 99),
)
LABELS = st.builds(
    Label,
    name=st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3).map(tuple),
    probability=PROBABILITY,
    sentiment=OPTIONAL_FLOAT,
    auto_thresholds=st.none() | st.lists(TEXT, max_size=2).map(tuple),
)
ENTITIES = st.builds(
    Entity,
    id=st.none() | TEXT,
    name=TEXT,
    kind=st.none() | TEXT,
    formatted_value=TEXT,
    probability=st.none() | PROBABILITY,
    span=st.none() | SPANS,
    spans=st.lists(SPANS, max_size=2).map(tuple),
    capture_ids=st.lists(st.integers(0, 9), max_size=2).map(tuple),
)
PREDICTIONS = st.builds(
    DocumentPrediction,
    labels=st.lists(LABELS, max_size=3).map(tuple),
    entities=st.lists(ENTITIES, max_size=2).map(tuple),
    label_properties=st.lists(
        st.builds(
            LabelProperty,
            property_id=st.none() | TEXT,
            property_name=TEXT,
            value=st.floats(-1e6, 1e6),
        ),
        max_size=2,
    ).map(tuple),
    sentiment=OPTIONAL_FLOAT,
)
BATCHES = st.builds(
    PredictionBatch,
    predictions=st.lists(PREDICTIONS, max_size=3).map(tuple),
    model=st.none() | st.builds(ModelInfo, version=st.integers(0, 99), time=st.none() | TEXT),
    comments=st.lists(st.dictionaries(TEXT, TEXT, max_size=2), max_size=2).map(tuple),
)
ERRORS = st.sampled_from(
    [
        ClassifierError("plain"),
        InvalidRequestError("bad request", status=400),
        RateLimitedError("slow down", status=429),
        MalformedResponseError("predictions is missing"),
        RuntimeError("a bug in the batcher"),
    ]
)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT
EVENTS = st.lists(st.lists(SCALARS, max_size=5), max_size=4)
CIRCUITS = st.dictionaries(TEXT, st.lists(SCALARS, max_size=2), max_size=2)


@given(
    st.integers(0, 2**62),
    st.none() | BATCHES,
    st.none() | ERRORS,
    EVENTS,
    CIRCUITS,
)
def test_encode_reply_gives_the_models_octets(
    request_id: int,
    batch: PredictionBatch | None,
    error: BaseException | None,
    events: list[list[Any]],
    circuits: dict[str, list[Any]],
) -> None:
    args: dict[str, Any] = {"batch": batch, "error": error, "events": events, "circuits": circuits}
    encoded = batch_wire.encode_reply(request_id, **args)
    assert encoded == reference_reply(request_id, **args)
    reply = WireReply.model_validate_json(encoded[4:])
    assert reply.id == request_id and len(reply.events) == len(events)
    if batch is not None:
        assert reply.batch == PredictionBatch(predictions=batch.predictions, model=batch.model)


def test_a_request_frame_round_trips() -> None:
    docs: Any = [{"raw_email": {"headers": {"raw": "Subject: é"}, "body": {"plain": "x"}}}]
    frame = encode_request(7, docs)
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert decode_request(frame[4:]) == {"id": 7, "documents": docs}
