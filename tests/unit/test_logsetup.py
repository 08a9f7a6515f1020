"""Logging: structlog's events are written without the stdlib round trip, and the lines
are the same as the round trip wrote; secrets are scrubbed on both routes; the scrubbing
fast path changes nothing the slow path would not."""

from __future__ import annotations

import io
import logging
import re
from collections import OrderedDict
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway import redact
from gateway.logsetup import _scrub_secrets, _scrub_value, configure_logging, get_logger
from gateway.testing import isolated_secrets

SECRET = "tok-3f9a8b7c6d5e"
_TIMESTAMP = re.compile(r'"timestamp": "[^"]*"|^\S+Z ', re.MULTILINE)


# Each test gets the registry and the logging set-up back as it found them.
pytestmark = pytest.mark.usefixtures("isolated_logging")


def _stdlib_route(level: str, fmt: str, stream: io.StringIO) -> None:
    """The set-up before the direct path (commit 0a1a2f5): every structlog event became a
    stdlib LogRecord rendered by ProcessorFormatter. The reference the lines must match."""
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
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


def _lines(setup: Any, fmt: str, emit: Any) -> str:
    stream = io.StringIO()
    setup("info", fmt, stream)
    emit()
    return _TIMESTAMP.sub("<ts>", stream.getvalue())


_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.builds(lambda a, b: a + SECRET + b, st.text(max_size=5), st.text(max_size=5))
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# Keys the processors own or read are not the caller's to pass.
_KEYS = st.text(min_size=1, max_size=8).filter(
    lambda k: k not in {"event", "exc_info", "stack_info", "_record", "_from_structlog"}
)
_EVENTS = st.dictionaries(_KEYS, _VALUES, max_size=6)


@settings(
    max_examples=60,
    # too_slow: recursive values are slow to draw when the 2 shared cores are busy.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_EVENTS, st.sampled_from(["json", "console"]), st.sampled_from(["info", "warning"]))
@example({"reply": "250 2.0.0", "size": 4077, "rules_hit": ["a", f"x{SECRET}"]}, "json", "info")
def test_direct_path_writes_the_lines_the_stdlib_round_trip_wrote(
    fields: dict[str, Any], fmt: str, method: str
) -> None:
    redact.register_secret(SECRET)

    def emit() -> None:
        getattr(get_logger("cm-gateway.test"), method)("message", **fields)
        get_logger("cm-gateway.test").debug("below-the-level", **fields)

    expected = _lines(_stdlib_route, fmt, emit)
    assert _lines(configure_logging, fmt, emit) == expected
    assert expected.endswith("\n") and "below-the-level" not in expected
    assert SECRET not in expected


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exception_text_and_foreign_records_are_scrubbed_on_both_routes(fmt: str) -> None:
    redact.register_secret(SECRET)

    def emit() -> None:
        try:
            raise RuntimeError(f"upstream said Bearer {SECRET}")
        except RuntimeError:
            get_logger("cm-gateway.test").exception("failed", where=f"url?t={SECRET}")
        logging.getLogger("httpx").warning("retry with %s", SECRET)
        logging.getLogger("httpx").info("below the noisy loggers' level")

    expected = _lines(_stdlib_route, fmt, emit)
    actual = _lines(configure_logging, fmt, emit)
    assert actual == expected
    assert SECRET not in actual
    assert actual.count("[REDACTED]") >= 3
    assert "below" not in actual


def test_a_line_that_cannot_be_rendered_is_dropped_not_raised(
    capsys: pytest.CaptureFixture[str],
) -> None:
    class Unprintable:
        def __repr__(self) -> str:
            raise ValueError("no")

    stream = io.StringIO()
    configure_logging("info", "json", stream)
    get_logger().info("broken", value=Unprintable())
    get_logger().info("fine")
    assert [line.count('"event": "fine"') for line in stream.getvalue().splitlines()] == [1]
    assert "Logging error" in capsys.readouterr().err


def test_a_closed_stream_does_not_break_the_caller() -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    stream.close()
    get_logger().info("nowhere")  # no exception


def test_loggers_are_cached_per_name_and_follow_reconfiguration() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("info", "json", first)
    log = get_logger("cm-gateway.same")
    log.info("one")
    configure_logging("info", "json", second)
    log.info("two")
    assert '"event": "one"' in first.getvalue() and "two" not in first.getvalue()
    assert '"logger": "cm-gateway.same"' in second.getvalue()


_SCRUBBABLE: st.SearchStrategy[Any] = st.recursive(
    _SCALARS | st.builds(OrderedDict, st.dictionaries(st.text(max_size=3), _SCALARS)),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60)
@given(st.dictionaries(st.text(max_size=5), _SCRUBBABLE, max_size=8), st.booleans())
@example({"a": 1, "b": f"..{SECRET}.."}, True)
@example({"a": OrderedDict(x="plain")}, True)
def test_scrub_fast_path_equals_scrubbing_every_value(
    event: dict[str, Any], registered: bool
) -> None:
    with isolated_secrets(*([SECRET] if registered else []), clear=True):
        # With no secret registered at all the line is passed on as it is (as before).
        slow = {k: _scrub_value(v) for k, v in event.items()} if registered else event
        fast = _scrub_secrets(None, "info", dict(event))
        assert fast == slow
        # Same types too (a dict subclass renders differently in the console format).
        assert repr(fast) == repr(slow)
        if registered:
            assert SECRET not in repr(fast)


def test_contains_secret_agrees_with_scrub() -> None:
    redact.register_secret(SECRET)
    for text in ("", "plain", SECRET, f"a{SECRET}b", SECRET[:-1]):
        assert redact.contains_secret(text) == (redact.scrub(text) != text)
