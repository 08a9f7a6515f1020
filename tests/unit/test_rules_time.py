"""``time: {days, between, tz}``: windows on the wall clock of an IANA zone, wrapping
midnight, on both daylight-saving transition days."""

from __future__ import annotations

import dataclasses
from datetime import datetime

import pytest

from gateway.errors import RuleFileError
from gateway.rules import parse_rules
from tests.unit.test_rules_support import context, prediction


def held(time: str, at: str) -> tuple[bool, str]:
    """Whether ``time: {...}`` holds at the ISO moment ``at``, and why."""
    ruleset = parse_rules(f"rules:\n  - name: r\n    when: {{time: {time}}}\n", file="t.yaml")
    ctx = dataclasses.replace(context(prediction({})), at=datetime.fromisoformat(at))
    verdict = ruleset.evaluate(ctx, default_threshold=0.25).verdicts[0]
    return verdict.matched, verdict.why


OFFICE = '{days: mon-fri, between: "08:00-18:00", tz: Europe/London}'


def test_business_hours_hold_inside_and_not_outside_or_at_the_weekend() -> None:
    """Mon 10:00 UTC (= London in winter) inside; 18:00 (end excluded), 07:59, Sat out."""
    assert held(OFFICE, "2026-12-07T10:00:00+00:00") == (
        True,
        "time mon 2026-12-07 10:00 Europe/London inside mon,tue,wed,thu,fri 08:00-18:00 "
        "Europe/London",
    )
    assert held(OFFICE, "2026-12-07T08:00:00+00:00")[0] is True
    assert held(OFFICE, "2026-12-07T18:00:00+00:00")[0] is False
    assert held(OFFICE, "2026-12-07T07:59:00+00:00")[0] is False
    assert held(OFFICE, "2026-12-05T10:00:00+00:00")[0] is False


def test_the_moment_is_converted_to_the_zone_before_comparing() -> None:
    """08:30 in New York is 13:30 UTC: outside London's hours, inside New York's."""
    ny = '{days: mon-fri, between: "08:00-09:00", tz: America/New_York}'
    assert held(ny, "2026-12-07T13:30:00+00:00")[0] is True
    assert held(ny, "2026-12-07T08:30:00+00:00")[0] is False


@pytest.mark.parametrize(
    ("at", "inside"),
    [
        # 2026-03-29, London springs forward at 01:00 GMT -> 02:00 BST.
        ("2026-03-29T00:59:00+00:00", False),  # 00:59 GMT
        ("2026-03-29T01:00:00+00:00", True),  # 02:00 BST: 01:xx local never happens
        ("2026-03-29T05:59:00+00:00", True),  # 06:59 BST
        ("2026-03-29T06:00:00+00:00", False),  # 07:00 BST: the window ended at 07:00 local
        # 2026-10-25, London falls back at 01:00 UTC: 01:00-02:00 local happens twice.
        ("2026-10-25T00:30:00+00:00", True),  # 01:30 BST, first time
        ("2026-10-25T01:30:00+00:00", True),  # 01:30 GMT, second time
        ("2026-10-25T06:59:00+00:00", True),  # 06:59 GMT
        ("2026-10-25T07:00:00+00:00", False),  # 07:00 GMT: the window ended at 07:00 local
    ],
)
def test_daylight_saving_days_compare_the_local_wall_clock(at: str, inside: bool) -> None:
    """'01:30-07:00' local on both London transition days, at the instants around it."""
    window = '{between: "01:30-07:00", tz: Europe/London}'
    assert held(window, at)[0] is inside, held(window, at)[1]


def test_a_window_wrapping_midnight_belongs_to_the_day_it_starts() -> None:
    """fri 22:00-06:00: Fri 23:00 and Sat 02:00 inside; Fri 02:00 (Thursday's night) not."""
    night = '{days: fri, between: "22:00-06:00"}'
    assert held(night, "2026-12-04T23:00:00+00:00")[0] is True
    assert held(night, "2026-12-05T02:00:00+00:00")[0] is True
    assert held(night, "2026-12-04T02:00:00+00:00")[0] is False
    assert held(night, "2026-12-05T06:00:00+00:00")[0] is False
    assert held(night, "2026-12-05T12:00:00+00:00")[0] is False


def test_days_take_ranges_lists_and_week_wrapping_ranges() -> None:
    """'fri-mon' wraps the weekend; a list mixes items; full day names are accepted."""
    assert held("{days: fri-mon}", "2026-12-06T12:00:00+00:00")[0] is True  # Sunday
    assert held("{days: fri-mon}", "2026-12-08T12:00:00+00:00")[0] is False  # Tuesday
    assert held("{days: [tue, thursday]}", "2026-12-08T12:00:00+00:00")[0] is True
    assert held('{days: "sat,sun"}', "2026-12-08T12:00:00+00:00")[0] is False


def test_without_a_time_of_its_own_the_condition_sees_the_processing_time() -> None:
    """No ``at`` in the context: now (UTC), so days mon-sun always holds."""
    ruleset = parse_rules("rules:\n  - name: r\n    when: {time: {days: mon-sun}}\n")
    assert ruleset.evaluate(context(prediction({})), default_threshold=0.25).verdicts[0].matched


@pytest.mark.parametrize(
    ("time", "where", "fragment"),
    [
        ("{days: mon-fry}", "3:25", "unknown day 'fry'"),
        ('{between: "8-18"}', "3:28", 'expected "HH:MM-HH:MM"'),
        ('{between: "08:00-24:00"}', "3:28", "00:00 to 23:59"),
        ('{between: "08:00-08:00"}', "3:28", "empty window"),
        ("{days: mon, tz: Mars/Olympus}", "3:34", "unknown time zone 'Mars/Olympus'"),
        ("{tz: UTC}", "3:18", "time needs 'days' and/or 'between'"),
    ],
)
def test_bad_time_conditions_are_refused_at_their_line_and_column(
    time: str, where: str, fragment: str
) -> None:
    """Each mistake names the key's position in the rule file."""
    with pytest.raises(RuleFileError) as info:
        parse_rules(f"rules:\n  - name: r\n    when: {{time: {time}}}\n", file="t.yaml")
    assert info.value.where == where, str(info.value)
    assert fragment in info.value.message
