"""What a hostile message may cost the parser: nesting and the number of MIME parts.

Real mail nests a few dozen containers at most (a thread forwarded as attachments) and
has a few dozen parts. The stdlib parser's cost grows with the square of the nesting
depth, and linearly but steeply with the parts: a 4.9 MB message of 100,000 empty parts
took 5 s of CPU and ~120 MB to parse whole, and four at once held 448 MB. Past
``MAX_CONTAINERS`` the body is not parsed at all; past ``MAX_MIME_PARTS`` only the first
parts are (the rest are counted: ``MimePartLimitDefect``, and the document's
``number:MIME Parts Not Read``).
"""

from __future__ import annotations

import itertools
import re

__all__ = ["MAX_CONTAINERS", "MAX_MIME_PARTS", "cap_parts", "too_many_containers"]

MAX_CONTAINERS = 256
MAX_MIME_PARTS = 1000
_CONTAINER = re.compile(rb"boundary\s*\*?[0-9]*\*?\s*=|message/")
_WINDOW = 256 * 1024
_DELIMITER = b"\n--"  # a line that may open a part: the count is an upper bound


def cap_parts(raw: bytes, body_start: int) -> tuple[bytes, int]:
    """``raw`` cut before the delimiter line that would open part ``MAX_MIME_PARTS + 1``,
    and how many such lines it had after that (0: ``raw`` itself, uncut)."""
    lines = raw.count(_DELIMITER, body_start)
    if lines <= MAX_MIME_PARTS:
        return raw, 0
    cut = body_start
    for _ in range(MAX_MIME_PARTS + 1):
        cut = raw.find(_DELIMITER, cut) + 1
    return raw[:cut], lines - MAX_MIME_PARTS


def too_many_containers(raw: bytes) -> bool:
    """More multipart/message containers declared than any real message has."""
    # Lower-cased copies and bytes.count calls, a mixed-case "BoUnDaRy" counted too; the
    # regex runs only on suspicious input. In windows of _WINDOW octets: this runs in a
    # worker thread for a big message, but each C call holds the GIL to its end (on 9 MB,
    # one lower() took 38 ms and each count ~30 ms, while the event loop waited).
    count = 0
    for start in range(0, len(raw), _WINDOW):
        # Each window reaches 7 octets into the next, so that every 8-octet name starting
        # in it is whole in it, and no name is counted by two windows.
        window = raw[start : start + _WINDOW + 7].lower()
        count += window.count(b"boundary") + window.count(b"message/")
    if count <= MAX_CONTAINERS:
        return False
    found = _CONTAINER.finditer(raw.lower())
    return sum(1 for _ in itertools.islice(found, MAX_CONTAINERS + 1)) > MAX_CONTAINERS
