"""gateway.testing.isolated_secrets gives the process-wide redaction registry back."""

from __future__ import annotations

from gateway import redact
from gateway.testing import isolated_secrets


def test_secrets_registered_in_the_block_are_scrubbed_there_and_forgotten_after() -> None:
    with isolated_secrets("blocksecret-123456"):
        assert redact.scrub("token blocksecret-123456") == "token [REDACTED]"
    assert redact.scrub("token blocksecret-123456") == "token blocksecret-123456"


def test_clear_hides_secrets_registered_before_and_restores_them() -> None:
    with isolated_secrets("outer-secret-654321"):
        with isolated_secrets(clear=True):
            assert not redact.contains_secret("outer-secret-654321")
        assert redact.contains_secret("outer-secret-654321")
