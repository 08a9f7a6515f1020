"""Logging: structlog, JSON lines (pretty on a TTY), with the stdlib loggers of aiosmtpd
and httpx routed through the same pipeline at WARNING.

The last processor before rendering scrubs every registered secret (the API token, the
custom provider's secret) from every value, so that no code path can log one, even by
accident inside an exception message.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from .redact import _SECRETS, register_secret, scrub

__all__ = ["configure_logging", "get_logger", "register_secret", "scrub"]

_NOISY = ("mail.log", "httpx", "httpcore", "aiohttp.access", "asyncio", "hpack")


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _scrub_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event_dict
    return {k: _scrub_value(v) for k, v in event_dict.items()}


def configure_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog and the stdlib root logger once, at start-up."""
    stream = stream or sys.stderr
    pretty = fmt == "console" or (fmt == "auto" and stream.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if pretty
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    numeric = logging.getLevelName(level.upper())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                _scrub_secrets,
                renderer,
            ],
        )
    )
    logging.basicConfig(handlers=[handler], level=numeric, force=True)
    for name in _NOISY:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # mail-parser logs header values (message content) at ERROR when it cannot decode
    # them, and a warning for every part type it does not handle: neither is ours to log.
    logging.getLogger("mailparser").setLevel(logging.CRITICAL)


def get_logger(name: str = "cm-gateway") -> Any:
    """A structlog logger bound to ``name``."""
    return structlog.get_logger(name)
