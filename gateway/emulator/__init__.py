"""A local stand-in for the Communications Mining prediction API.

``cm-gateway emulate`` serves it over HTTP; ``EmulatorClassifier`` runs the same keyword
model in-process; ``gateway.testing.running_emulator`` serves it from tests. The model is
keyword-based (``taxonomy.yaml``), deterministic, and NOT a trained model.
"""

from __future__ import annotations

from ._faults import FaultInjector, FaultSettings
from ._model import KeywordModel
from ._provider import EmulatorClassifier
from ._server import CLIENT_MAX_SIZE, EmulatorServer, EmulatorState, start_server
from ._validate import RequestInvalid, validate_predict_raw_emails

__all__ = [
    "CLIENT_MAX_SIZE",
    "EmulatorClassifier",
    "EmulatorServer",
    "EmulatorState",
    "FaultInjector",
    "FaultSettings",
    "KeywordModel",
    "RequestInvalid",
    "start_server",
    "validate_predict_raw_emails",
]
