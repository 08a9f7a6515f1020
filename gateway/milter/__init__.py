"""The milter front (Sendmail milter protocol v6, for Postfix and Sendmail): not built yet."""

from __future__ import annotations

__all__ = []
