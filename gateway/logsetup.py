"""Logging: structlog, JSON lines (pretty on a TTY), with the stdlib loggers of aiosmtpd
and httpx routed through the same renderer at WARNING.

The last processor before rendering scrubs every registered secret (the API token, the
custom provider's secret) from every value, so that no code path can log one, even by
accident inside an exception message.

structlog's own events do not take the round trip through stdlib ``logging`` (a
LogRecord, a caller-frame walk, a second LogRecord in ``ProcessorFormatter``): that was
about half of the logging CPU per message. They run the same processors in structlog's
chain and are written to the stdlib handler's stream under the handler's lock, so both
kinds of lines stay whole and in order. Foreign records (aiosmtpd, httpx, asyncio) still
go through ``ProcessorFormatter`` with the same processors and renderer.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from gateway.redact import _SECRETS, contains_secret, scrub

__all__ = [
    "configure_logging",
    "get_logger",
]

_NOISY = ("mail.log", "httpx", "httpcore", "aiohttp.access", "asyncio", "hpack")
# Values no secret can hide in: skipped without a look (type(), not isinstance: a
# subclass of int may render as anything).
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_scrub_value(v) for v in value)
    return value


def _collect_strings(value: Any, out: list[str]) -> bool:
    """Append every string ``_scrub_value`` would scrub in ``value`` to ``out``; False
    when ``_scrub_value`` would return something other than ``value`` even without a
    secret in it (it turns a dict subclass into a plain dict), so the caller must run it."""
    kind = type(value)
    if kind is str:
        out.append(value)
    elif kind in _PLAIN_TYPES:
        pass
    elif kind is list or kind is tuple:
        return all(_collect_strings(v, out) for v in value)
    elif kind is dict:
        return all(_collect_strings(v, out) for v in value.values())
    elif isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict | list | tuple):
        return False
    return True


def _scrub_secrets(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    if not _SECRETS:
        return event_dict
    # Fast path: one substring search per secret over all the strings of the line. When
    # none occurs, scrubbing value by value would change nothing. The loop is inlined
    # for the common str and number values: it runs for every line.
    strings: list[str] = []
    for value in event_dict.values():
        kind = type(value)
        if kind is str:
            strings.append(value)
        elif kind not in _PLAIN_TYPES and not _collect_strings(value, strings):
            break
    else:
        if not contains_secret("\n".join(strings)):
            return event_dict
    return {k: _scrub_value(v) for k, v in event_dict.items()}


class _Render:
    """The last processor of structlog's chain: exception text, scrubbing, renderer.

    A failure here must not reach the code that logged (it would turn a log line into a
    451): like ``logging.Handler.handleError``, it is reported on stderr and the line is
    dropped."""

    def __init__(self, renderer: Any) -> None:
        self._steps = (structlog.processors.format_exc_info, _scrub_secrets, renderer)

    def __call__(self, logger: Any, name: str, event_dict: MutableMapping[str, Any]) -> Any:
        try:
            for step in self._steps:
                event_dict = step(logger, name, event_dict)
        except Exception:
            if logging.raiseExceptions and sys.stderr is not None:
                sys.stderr.write(f"--- Logging error ---\n{sys.exc_info()[0]!r} in {name}\n")
            raise structlog.DropEvent from None
        return event_dict


class _LineLogger:
    """structlog's logger: writes each rendered line to the stdlib handler's stream
    (write, then flush, as ``StreamHandler.emit`` does), under that handler's lock."""

    __slots__ = ("_handler", "name")

    def __init__(self, name: str, handler: logging.StreamHandler[TextIO]) -> None:
        self.name = name  # read by structlog.stdlib.add_logger_name
        self._handler = handler

    def msg(self, line: str) -> None:
        handler = self._handler
        handler.acquire()
        try:
            stream = handler.stream
            stream.write(line + handler.terminator)
            stream.flush()
        except Exception:
            # A closed or broken stderr: the stdlib handler would report and carry on;
            # logging must never break the mail flow.
            pass
        finally:
            handler.release()

    debug = info = warning = warn = error = err = critical = fatal = exception = msg
    notset = log = msg


class _LineLoggerFactory:
    """One ``_LineLogger`` per name (structlog asks for one on every call: loggers are
    not cached, so that ``structlog.testing.capture_logs`` sees module-level loggers)."""

    def __init__(self, handler: logging.StreamHandler[TextIO]) -> None:
        self._handler = handler
        self._loggers: dict[str, _LineLogger] = {}

    def __call__(self, *args: Any) -> _LineLogger:
        # get_logger always passes a name; "cm-gateway" is its default.
        name = str(args[0]) if args else "cm-gateway"
        logger = self._loggers.get(name)
        if logger is None:
            logger = self._loggers[name] = _LineLogger(name, self._handler)
        return logger


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
    handler: logging.StreamHandler[TextIO] = logging.StreamHandler(stream)
    structlog.configure(
        processors=[*shared, _Render(renderer)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_LineLoggerFactory(handler),
        cache_logger_on_first_use=False,
    )
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
