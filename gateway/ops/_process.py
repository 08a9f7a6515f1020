"""What every gateway process (single, worker, batcher) shares: its secrets and its grace."""

from __future__ import annotations

from gateway.config import Config
from gateway.redact import register_secret

__all__ = ["register_secrets", "shutdown_grace"]


def shutdown_grace(config: Config) -> float:
    """How long sessions inside DATA (and their classifications) get to finish at shutdown."""
    return min(30.0, config.smtp.timeout)


def register_secrets(config: Config) -> None:
    """Make the configured secrets unprintable (logs, replies, errors) in this process."""
    register_secret(config.classifier.token())
    register_secret(config.classifier.secret())
