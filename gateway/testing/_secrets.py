"""The secrets registry (``gateway.redact``) is one set for the whole process: a test
that registers a secret would otherwise leave it scrubbed in every later test."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway import redact

__all__ = ["isolated_secrets"]


@contextmanager
def isolated_secrets(*secrets: str, clear: bool = False) -> Iterator[None]:
    """Register ``secrets`` for the block, then give the registry back as it was.

    ``clear`` starts the block with no secret registered at all (the scrubber's "nothing
    to do" path)::

        with isolated_secrets("tok-123456"):
            assert redact.scrub("Bearer tok-123456") == "Bearer [REDACTED]"
    """
    saved = set(redact._SECRETS)
    try:
        if clear:
            redact._SECRETS.clear()
        for secret in secrets:
            redact.register_secret(secret)
        yield
    finally:
        redact._SECRETS.clear()
        redact._SECRETS.update(saved)
