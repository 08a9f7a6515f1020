"""Messages and predictions from files, for ``cm-gateway explain``, ``classify`` and
``rules test``: what the classifier would have answered, and the envelope a file lacks.

The ``--predictions`` file holds one document's prediction, or a whole
``predict-raw-emails`` response with exactly one document, or ``{"unclassified": reason}``
/ ``{"skipped": reason}`` (see docs/rules.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.classify import parse_prediction_batch
from gateway.context import CLASSIFIED, ClassificationStatus
from gateway.errors import ConfigError, MalformedResponseError
from gateway.predictions import DocumentPrediction, ModelInfo
from gateway.textfile import read_text

__all__ = ["GivenPredictions", "load_predictions_file", "parse_predictions"]


@dataclass(frozen=True, slots=True)
class GivenPredictions:
    """Predictions read from a file: what the classifier would have answered."""

    prediction: DocumentPrediction | None
    status: ClassificationStatus
    model_version: int | None


def _sentiment(value: Any) -> Any:
    # The API sends {"total": x} per document; one-document files often say just x.
    if isinstance(value, dict):
        return value.get("total")
    return value


def _why(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "prediction"
    return f"{loc}: {err['msg']}"


def parse_predictions(data: Any) -> GivenPredictions:
    """Any of the accepted shapes -> ``GivenPredictions``; raises ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    for state in ("unclassified", "skipped"):
        if state in data:
            reason = data[state]
            if not isinstance(reason, str) or not reason.strip():
                raise ValueError(f"{state!r} needs a reason, e.g. {{{state!r}: 'timeout'}}")
            return GivenPredictions(None, ClassificationStatus(state, reason.strip()), None)
    if isinstance(data.get("predictions"), list):
        count = len(data["predictions"])
        if count != 1:
            raise ValueError(f"the response holds {count} documents; exactly one is needed")
        try:
            batch = parse_prediction_batch(data, 1)
        except MalformedResponseError as exc:
            raise ValueError(str(exc)) from None
        return GivenPredictions(batch.predictions[0], CLASSIFIED, batch.model_version)
    try:
        prediction = DocumentPrediction.model_validate(
            {
                "labels": data.get("labels") or (),
                "entities": data.get("entities") or (),
                "label_properties": data.get("label_properties") or (),
                "sentiment": _sentiment(data.get("sentiment")),
            }
        )
        model = ModelInfo.model_validate(data["model"]) if data.get("model") else None
    except ValidationError as exc:
        raise ValueError(_why(exc)) from None
    return GivenPredictions(prediction, CLASSIFIED, model.version if model else None)


def load_predictions_file(path: str | Path) -> GivenPredictions:
    """Read a ``--predictions`` file; errors name the file (and line:column for JSON)."""
    file = str(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"not JSON: {exc.msg}", file=file, where=f"{exc.lineno}:{exc.colno}"
        ) from None
    try:
        return parse_predictions(data)
    except ValueError as exc:
        raise ConfigError(str(exc), file=file) from None
