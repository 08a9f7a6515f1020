"""What every gateway process (single, worker, batcher) shares: its secrets, its grace,
and what a hangup means."""

from __future__ import annotations

import os

from gateway.config import Config
from gateway.redact import register_secret

__all__ = ["hangup_stops", "register_secrets", "shutdown_grace"]


def shutdown_grace(config: Config) -> float:
    """How long sessions inside DATA (and their classifications) get to finish at shutdown."""
    return min(30.0, config.smtp.timeout)


def register_secrets(config: Config) -> None:
    """Make the configured secrets unprintable (logs, replies, errors) in this process."""
    register_secret(config.classifier.token())
    register_secret(config.classifier.secret())


def hangup_stops() -> bool:
    """True when this process has a controlling terminal: SIGHUP then means the terminal
    went away, and the gateway stops like any foreground program (it used to reload and
    live on, holding its port). Without one (systemd, a daemon) SIGHUP reloads the rules.
    SIGUSR1 reloads in both cases."""
    try:
        fd = os.open("/dev/tty", os.O_RDONLY | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True
