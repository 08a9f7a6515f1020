"""clean_text's line endings: every CRLF, CR and LF becomes one LF."""

from __future__ import annotations

import re

from hypothesis import example, given
from hypothesis import strategies as st

from gateway.mail._mimetext import clean_text, fix_surrogates

_ENDING = re.compile(r"\r\n|\r|\n")


def _clean_text_by_regex(text: str) -> str:
    # clean_text as it was written first: one regex substitution over the endings.
    text = fix_surrogates(text).replace("\x00", "")
    return _ENDING.sub("\n", text)


@given(st.text(alphabet=st.sampled_from(["\r", "\n", "a", " ", "\x00", "\udce4", "\xe9"])))
@example("\r\r\n\n\r")
@example("a\r\x00\nb")
def test_clean_text_turns_each_line_ending_into_one_lf(text: str) -> None:
    assert clean_text(text) == _clean_text_by_regex(text)
