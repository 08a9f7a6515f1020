"""``time: {days, between, tz}``: business hours and the like, on the local wall clock.

The moment compared is when the gateway processes the message (``MessageContext.at``,
the current time when unset), converted to ``tz`` (an IANA zone, default UTC) with
``zoneinfo``; the ``tzdata`` package provides the zones where the system has none.

- ``days``: ``mon-fri``, ``sat``, ``mon,wed,fri``, ``fri-mon`` (wraps the week), or a
  list of such items; default every day.
- ``between``: ``"HH:MM-HH:MM"``, start included, end excluded; default the whole day.
  A window whose end is earlier than its start wraps midnight: ``22:00-06:00`` is the
  night, and its morning part belongs to the day it started on (``days: fri`` with
  ``22:00-06:00`` holds on Saturday at 02:00, not on Friday at 02:00).
- Daylight saving time: the comparison is on the local wall clock, so ``08:00-18:00``
  means 08:00-18:00 local on both transition days; a time skipped by the spring jump
  never occurs, and the repeated autumn hour is inside a window both times.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic_core import PydanticCustomError

from ._facts import Facts
from ._predicates import Verdict

__all__ = ["DAY_NAMES", "TimeIs", "parse_between", "parse_days", "zone"]

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_ALIASES = {name: i for i, name in enumerate(DAY_NAMES)} | {
    full: i
    for i, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    )
}
_BETWEEN = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def _fail(message: str) -> PydanticCustomError:
    return PydanticCustomError("time", message)


def _day(word: str) -> int:
    index = _DAY_ALIASES.get(word.strip().lower())
    if index is None:
        raise _fail(f"unknown day {word.strip()!r}: use mon, tue, wed, thu, fri, sat, sun")
    return index


def parse_days(value: str | Iterable[str]) -> frozenset[int]:
    """``mon-fri`` / ``sat,sun`` / a list of such items -> weekday numbers (Monday 0)."""
    items = [value] if isinstance(value, str) else list(value)
    out: set[int] = set()
    for item in items:
        for part in item.split(","):
            if not part.strip():
                raise _fail(f"empty day in {item!r}")
            first, dash, last = part.partition("-")
            start = _day(first)
            if not dash:
                out.add(start)
                continue
            end = _day(last)
            span = (end - start) % 7  # 'fri-mon' wraps over the weekend
            out.update((start + i) % 7 for i in range(span + 1))
    if not out:
        raise _fail("days must name at least one day")
    return frozenset(out)


def parse_between(value: str) -> tuple[time, time]:
    """``"08:00-18:00"`` -> (start, end); start included, end excluded."""
    match = _BETWEEN.match(value)
    if match is None:
        raise _fail(f'bad between {value!r}: expected "HH:MM-HH:MM", e.g. "08:00-18:00"')
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    for hour, minute in ((h1, m1), (h2, m2)):
        if hour > 23 or minute > 59:
            raise _fail(f"bad time {hour:02d}:{minute:02d} in {value!r}: 00:00 to 23:59")
    start, end = time(h1, m1), time(h2, m2)
    if start == end:
        raise _fail(f"empty window {value!r}: leave 'between' out for the whole day")
    return start, end


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``PydanticCustomError`` when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _fail(
            f"unknown time zone {name!r}: an IANA name such as 'Europe/London' or 'UTC'"
        ) from None


def check_days(value: Any) -> Any:
    """Field validator: the value parses (``parse_days``)."""
    parse_days(value)
    return value


def check_between(value: str) -> str:
    """Field validator: the value parses (``parse_between``)."""
    parse_between(value)
    return value


def check_zone(value: str) -> str:
    """Field validator: an IANA zone name."""
    zone(value)
    return value


def _days_text(days: frozenset[int]) -> str:
    return ",".join(DAY_NAMES[d] for d in sorted(days))


class TimeIs:
    """``time``: the processing moment, on ``tz``'s wall clock, is inside the window."""

    __slots__ = ("days", "end", "start", "text", "tz")

    def __init__(self, days: str | list[str] | None, between: str | None, tz: str) -> None:
        self.days = parse_days(days) if days is not None else frozenset(range(7))
        self.start: time | None = None
        self.end: time | None = None
        if between is not None:
            self.start, self.end = parse_between(between)
        self.tz = zone(tz)
        shown = f" {between.strip()}" if between is not None else ""
        self.text = f"time {_days_text(self.days)}{shown} {tz}"

    def inside(self, moment: datetime) -> tuple[bool, datetime]:
        """Whether ``moment`` (aware) is inside the window, and its local time."""
        local = moment.astimezone(self.tz)
        clock = local.time().replace(tzinfo=None)
        day = local.weekday()
        if self.start is None or self.end is None:
            return day in self.days, local
        if self.start < self.end:
            return day in self.days and self.start <= clock < self.end, local
        # Wraps midnight: the evening part is on the window's day, the morning part on
        # the next day (it belongs to the window that started the evening before).
        if clock >= self.start:
            return day in self.days, local
        if clock < self.end:
            return (local - timedelta(days=1)).weekday() in self.days, local
        return False, local

    def __call__(self, facts: Facts) -> Verdict:
        held, local = self.inside(facts.at)
        seen = f"{DAY_NAMES[local.weekday()]} {local:%Y-%m-%d %H:%M} {self.tz.key}"
        return held, f"time {seen} {'inside' if held else 'outside'} {self.text[5:]}"
