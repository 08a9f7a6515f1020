"""Test doubles shipped with the package (like ``structlog.testing``).

- ``running_emulator()``: the Communications Mining emulator over real HTTP on loopback;
- ``running_sink()`` / ``NextHopSink``: a next hop (a real SMTP server on loopback) that
  records envelope and bytes and does what its ``SinkBehaviour`` says;
- ``isolated_secrets()``: register secrets for a block, then give the process-wide
  redaction registry back as it was.
"""

from __future__ import annotations

from ._emulator import EmulatorHandle, running_emulator
from ._records import ReceivedMessage, SinkBehaviour, free_port
from ._secrets import isolated_secrets
from ._sink import XFORWARD_ALL, NextHopSink, running_sink

__all__ = [
    "XFORWARD_ALL",
    "EmulatorHandle",
    "NextHopSink",
    "ReceivedMessage",
    "SinkBehaviour",
    "free_port",
    "isolated_secrets",
    "running_emulator",
    "running_sink",
]
