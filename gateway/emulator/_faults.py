"""Fault injection: make a share of API calls fail the ways a real deployment fails.

``fail_status`` is one fault kind, or several separated by commas (each failing call then
picks one, uniformly, with the same seeded RNG):

* an HTTP status ``400``-``599``: the JSON error body; ``429`` adds ``Retry-After``;
* ``502-html``: a 502 whose body is an HTML page, as a proxy in front of the API sends;
* ``timeout``: the request is held (3600 s, released when the server stops or the client
  goes away), longer than any client timeout;
* ``malformed``: a 200 whose body breaks the promise, picked among ``malformed-json``
  (not JSON at all) and ``malformed-shape`` (valid JSON, ``predictions`` shorter than
  ``documents``); both can be asked for by name.

Which calls fail is decided by ``random.Random(seed)``: the same seed and the same
sequence of calls give the same faults. A faulted call is never billed.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "HOLD_SECONDS",
    "MALFORMED_KINDS",
    "FaultInjector",
    "FaultSettings",
    "html_502_body",
    "malformed_body",
    "parse_fail_status",
]

HOLD_SECONDS = 3600.0
MALFORMED_KINDS = ("malformed-json", "malformed-shape")
_NAMED = ("timeout", "malformed", "502-html", *MALFORMED_KINDS)


def parse_fail_status(spec: str) -> tuple[str, ...]:
    """``"429,503,timeout"`` -> ``("429", "503", "timeout")``; raise ValueError if unknown."""
    kinds = tuple(part.strip().lower() for part in str(spec).split(",") if part.strip())
    if not kinds:
        raise ValueError("fail_status is empty")
    for kind in kinds:
        if kind in _NAMED:
            continue
        if not (kind.isdigit() and 400 <= int(kind) <= 599):
            raise ValueError(
                f"fail_status {kind!r}: expected an HTTP status 400-599, '502-html', "
                "'timeout' or 'malformed'"
            )
    return kinds


@dataclass
class FaultSettings:
    """What to inject; every field settable at run time (``POST /_emulator/faults``).

    ``version_latency_ms`` adds latency to the calls of one model version only, keyed by
    the version as the URL names it (``"staging"``) or by its number (``"8"``): a slow
    shadow model next to a fast live one."""

    fail_rate: float = 0.0
    fail_status: str = "503"
    latency_ms: float = 0.0
    retry_after: float = 1.0
    version_latency_ms: dict[str, float] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError when a value is out of range."""
        if not (math.isfinite(self.fail_rate) and 0.0 <= self.fail_rate <= 1.0):
            raise ValueError(f"fail_rate must be between 0 and 1, got {self.fail_rate}")
        if not (math.isfinite(self.latency_ms) and self.latency_ms >= 0):
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if not (math.isfinite(self.retry_after) and self.retry_after >= 0):
            raise ValueError(f"retry_after must be >= 0, got {self.retry_after}")
        for version, ms in self.version_latency_ms.items():
            if not (math.isfinite(ms) and ms >= 0):
                raise ValueError(f"version_latency_ms[{version!r}] must be >= 0, got {ms}")
        parse_fail_status(self.fail_status)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def latency_for(self, selector: str | None, version: int | None) -> float:
        """Milliseconds to wait before answering a call to model ``selector``
        (resolved to ``version``): ``latency_ms`` plus that version's own."""
        extra = self.version_latency_ms
        if not extra or selector is None:
            return self.latency_ms
        own = extra.get(selector, extra.get(str(version)) if version is not None else None)
        return self.latency_ms + (own or 0.0)


def _version_latency(value: object) -> dict[str, float]:
    if not isinstance(value, dict):
        raise ValueError("version_latency_ms: expected an object of version -> milliseconds")
    out: dict[str, float] = {}
    for key, ms in value.items():
        if isinstance(ms, bool) or not isinstance(ms, int | float):
            raise ValueError(f"version_latency_ms[{key!r}]: expected a number")
        out[str(key)] = float(ms)
    return out


_FIELDS = {
    "fail_rate": float,
    "latency_ms": float,
    "retry_after": float,
    "fail_status": str,
    "version_latency_ms": dict,
}


class FaultInjector:
    """Decides, call by call, whether and how to fail (seeded, hence reproducible)."""

    def __init__(self, settings: FaultSettings | None = None, seed: int | None = 0):
        self.settings = settings or FaultSettings()
        self.settings.check()
        self._kinds = parse_fail_status(self.settings.fail_status)
        self._rng = random.Random(seed)

    def update(self, changes: Mapping[str, object]) -> FaultSettings:
        """Apply a partial update (JSON from ``POST /_emulator/faults``); ValueError if bad.

        ``seed`` (int) re-seeds the RNG, so a test can replay a fault sequence."""
        merged = self.settings.to_json()
        seed = changes.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError("seed: expected an integer")
        for key, value in changes.items():
            if key == "seed":
                continue
            if key not in _FIELDS:
                raise ValueError(f"{key}: unknown field")
            if value is None:
                continue
            if key == "version_latency_ms":
                merged[key] = _version_latency(value)
            elif key == "fail_status":
                if isinstance(value, bool) or not isinstance(value, str | int):
                    raise ValueError("fail_status: expected a string or a status code")
                merged[key] = str(value)
            else:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError(f"{key}: expected a number")
                merged[key] = float(value)
        candidate = FaultSettings(**merged)
        candidate.check()
        self.settings = candidate
        self._kinds = parse_fail_status(candidate.fail_status)
        if seed is not None:
            self._rng.seed(seed)  # the same sequence of faults again, from this call on
        return candidate

    def draw(self) -> str | None:
        """The fault for this call (a kind of ``parse_fail_status``), or None."""
        rate = self.settings.fail_rate
        if rate <= 0.0:
            return None
        if self._rng.random() >= rate:
            return None
        kind = self._kinds[0] if len(self._kinds) == 1 else self._rng.choice(self._kinds)
        if kind == "malformed":
            kind = self._rng.choice(MALFORMED_KINDS)
        return kind


def html_502_body() -> str:
    """What an nginx in front of the API answers when the upstream is gone."""
    return (
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
        "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def malformed_body(kind: str, payload: Mapping[str, Any]) -> str:
    """A 200 body that breaks the promise of ``payload`` (the real answer)."""
    if kind == "malformed-json":
        text = json.dumps(payload)
        return text[: max(1, len(text) // 2)]  # cut mid-way: not JSON any more
    broken = dict(payload)
    for key in ("predictions", "entities", "label_properties", "sentiment"):
        if isinstance(broken.get(key), list):
            broken[key] = broken[key][:-1]
    return json.dumps(broken)
