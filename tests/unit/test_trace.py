"""Our trace field: the date is computed once per second and is formatdate's."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.pipeline._trace import _rfc5322_date

# 2001 .. 2065, at any sub-second offset, including the ones that round up a second.
_TIMES = st.floats(min_value=1e9, max_value=3e9, allow_nan=False)


@settings(max_examples=200)
@given(st.lists(_TIMES | _TIMES.map(lambda t: float(int(t)) + 0.9999997), max_size=20))
@example([1_700_000_000.9999996, 1_700_000_000.1, 1_700_000_001.0, 1_700_000_000.5])
@example([1_700_000_000.0000004, 1_699_999_999.9999999, 1_700_000_000.0])
def test_cached_date_is_formatdate_in_local_time(times: list[float]) -> None:
    """Whatever order the timestamps come in (the cache holds the last second only)."""
    for timestamp in times:
        assert _rfc5322_date(timestamp) == formatdate(timestamp, localtime=True)
