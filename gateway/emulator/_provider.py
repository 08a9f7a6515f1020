"""``EmulatorClassifier``: the keyword model in-process, behind the ``Classifier`` Protocol.

It is what the embedded default config (``provider = "emulator"``) classifies with: no
HTTP, no token, no bill. It builds the very request body the API client would send and
runs it through the emulator's strict validator first, so a payload bug fails here too
(``InvalidRequestError``), not first against the real API.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from gateway.config import ClassifierConfig
from gateway.documents import RawEmailDocument
from gateway.errors import InvalidRequestError, NotFoundError
from gateway.predictions import DocumentPrediction, PredictionBatch, split_label

from ._inputs import raw_email_docs
from ._model import KeywordModel, Selection
from ._validate import RequestInvalid, validate_predict_raw_emails

__all__ = ["EmulatorClassifier", "batch_from_response"]


def batch_from_response(payload: dict[str, Any]) -> PredictionBatch:
    """A ``predict``/``predict-raw-emails`` response body -> ``PredictionBatch``."""
    n = len(payload["predictions"])
    entities = payload.get("entities") or [[]] * n
    properties = payload.get("label_properties") or [[]] * n
    sentiments = payload.get("sentiment") or [None] * n
    docs = [
        DocumentPrediction.model_validate(
            {
                "labels": payload["predictions"][i],
                "entities": entities[i],
                "label_properties": properties[i],
                "sentiment": sentiments[i]["total"] if sentiments[i] else None,
            }
        )
        for i in range(n)
    ]
    return PredictionBatch.model_validate({"predictions": docs, "model": payload.get("model")})


class EmulatorClassifier:
    """The built-in keyword emulator as a ``gateway.context.Classifier`` (not a real model)."""

    def __init__(self, config: ClassifierConfig, model: KeywordModel | None = None):
        self._config = config
        self._model = model or KeywordModel.from_path(config.emulator_taxonomy or None)
        version = self._model.resolve_version(config.model_version)
        if version is None:
            raise NotFoundError(
                f"the emulator serves no model version {config.model_version!r}", status=404
            )
        self._version = version

    @property
    def description(self) -> str:
        source = self._config.emulator_taxonomy or "built-in taxonomy"
        return (
            f"emulator: built-in keyword model, NOT a real Communications Mining model "
            f"({source}, version {self._version})"
        )

    @property
    def model(self) -> KeywordModel:
        return self._model

    def request_body(self, documents: Sequence[RawEmailDocument]) -> dict[str, Any]:
        """The ``predict-raw-emails`` body the API client would send for ``documents``."""
        cfg = self._config
        body: dict[str, Any] = {
            "documents": list(documents),
            "transform_tag": cfg.transform_tag,
            "threshold": cfg.threshold,
        }
        if cfg.labels:
            body["labels"] = [
                {"name": list(split_label(lt.name))}
                | ({"threshold": lt.threshold} if lt.threshold is not None else {})
                for lt in cfg.labels
            ]
        return body

    async def predict_raw_emails(self, documents: Sequence[RawEmailDocument]) -> PredictionBatch:
        """Predict in-process; ``InvalidRequestError`` when the API would answer 400/422."""
        if not documents:
            return PredictionBatch(predictions=(), model=None)
        try:
            # Through JSON, as on the wire: tuples become arrays, NaN is refused.
            body = json.loads(json.dumps(self.request_body(documents), allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"request is not JSON-serialisable: {exc}") from None
        try:
            validate_predict_raw_emails(body, known_labels=self._model.label_names)
        except RequestInvalid as exc:
            raise InvalidRequestError(exc.message, status=exc.status) from None
        payload = self._model.predict_texts(
            raw_email_docs(body), version=self._version, selection=Selection.from_request(body)
        )
        return batch_from_response(payload)

    async def aclose(self) -> None:
        return None
