"""A local stand-in for the Communications Mining prediction API.

``cm-gateway emulate`` serves it over HTTP; ``EmulatorClassifier`` runs the same keyword
model in-process; ``gateway.testing.running_emulator`` serves it from tests. The model is
keyword-based (``taxonomy.yaml``), deterministic, and NOT a trained model.
"""

from __future__ import annotations

from ._model import KeywordModel
from ._validate import RequestInvalid, validate_predict_raw_emails

__all__ = ["KeywordModel", "RequestInvalid", "validate_predict_raw_emails"]
