"""cm-gateway: an SMTP relay that classifies mail with a Communications Mining model and
routes it by rules on the predicted labels."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
