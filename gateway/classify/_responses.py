"""JSON bodies of the prediction and validation routes -> typed results (``predictions``).

The API sends per-document data as parallel arrays (``predictions[i]``, ``entities[i]``,
``label_properties[i]``, ``sentiment[i].total``). A body whose arrays do not line up with
the request cannot be routed on safely, so it is a ``MalformedResponseError``: attaching
labels to the wrong message would be worse than no labels at all.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.errors import MalformedResponseError
from gateway.predictions import (
    CommentPrediction,
    DocumentPrediction,
    ModelInfo,
    PredictionBatch,
    ValidationSummary,
)

__all__ = ["parse_comment_predictions", "parse_prediction_batch", "parse_validation"]


def _why(exc: ValidationError) -> str:
    # Only the location and the rule: pydantic's input_value could echo message content.
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "body"
    return f"{loc}: {err['msg']}"


def _per_document(body: dict[str, Any], key: str, count: int) -> list[Any]:
    """``body[key]`` as one entry per document (``None`` entries when absent)."""
    value = body.get(key)
    if value is None:
        return [None] * count
    if not isinstance(value, list):
        raise MalformedResponseError(f"{key} is not a list")
    # label_properties is documented both as array<array<...>> and as a flat array "for
    # this comment"; a flat array can only be attributed when there is one document.
    if key == "label_properties" and count == 1 and value and isinstance(value[0], dict):
        return [value]
    if len(value) != count:
        raise MalformedResponseError(f"{key} has {len(value)} entries for {count} documents")
    return value


def _sentiment(value: Any, index: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("total")
        if value is None:
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise MalformedResponseError(f"sentiment.{index} is not a number or {{total: number}}")


def _model(body: dict[str, Any]) -> ModelInfo | None:
    raw = body.get("model")
    if raw is None:
        return None
    try:
        return ModelInfo.model_validate(raw)
    except ValidationError as exc:
        raise MalformedResponseError(f"model.{_why(exc)}") from None


def parse_prediction_batch(body: dict[str, Any], expected: int) -> PredictionBatch:
    """``predict`` / ``predict-raw-emails`` body with ``expected`` documents."""
    predictions = body.get("predictions")
    if not isinstance(predictions, list):
        raise MalformedResponseError("predictions is missing or not a list")
    if len(predictions) != expected:
        raise MalformedResponseError(f"{len(predictions)} predictions for {expected} documents")
    entities = _per_document(body, "entities", expected)
    properties = _per_document(body, "label_properties", expected)
    sentiments = _per_document(body, "sentiment", expected)
    docs: list[DocumentPrediction] = []
    for i in range(expected):
        try:
            docs.append(
                DocumentPrediction.model_validate(
                    {
                        "labels": predictions[i],
                        "entities": entities[i] or (),
                        "label_properties": properties[i] or (),
                        "sentiment": _sentiment(sentiments[i], i),
                    }
                )
            )
        except ValidationError as exc:
            raise MalformedResponseError(f"document {i}: {_why(exc)}") from None
    comments = body.get("comments") or ()
    if not isinstance(comments, list | tuple) or not all(isinstance(c, dict) for c in comments):
        raise MalformedResponseError("comments is not a list of objects")
    return PredictionBatch(predictions=tuple(docs), model=_model(body), comments=tuple(comments))


def parse_comment_predictions(body: dict[str, Any]) -> list[CommentPrediction]:
    """``predict-comments`` body: flat per-comment objects carrying their ``uid``."""
    items = body.get("predictions")
    if not isinstance(items, list):
        raise MalformedResponseError("predictions is missing or not a list")
    result: list[CommentPrediction] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedResponseError(f"predictions.{i} is not an object")
        data = {
            "uid": item.get("uid"),
            "labels": item.get("labels") or (),
            "entities": item.get("entities") or (),
            "label_properties": item.get("label_properties") or (),
            "sentiment": _sentiment(item.get("sentiment"), i),
        }
        try:
            result.append(CommentPrediction.model_validate(data))
        except ValidationError as exc:
            raise MalformedResponseError(f"predictions.{i}: {_why(exc)}") from None
    return result


def parse_validation(body: dict[str, Any]) -> ValidationSummary:
    """``validation`` body: ``{"status": "ok", "validation": {...}}``."""
    raw = body.get("validation")
    if not isinstance(raw, dict):
        raise MalformedResponseError("validation is missing or not an object")
    try:
        return ValidationSummary.model_validate(raw)
    except ValidationError as exc:
        raise MalformedResponseError(f"validation.{_why(exc)}") from None
