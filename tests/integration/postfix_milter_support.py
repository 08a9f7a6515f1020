"""A private Postfix with cm-gateway as its milter (deploy/postfix-milter/main.cf.snippet),
and the gateway (``python -m gateway serve``, milter front only) beside it.

Mail flow: client -> Postfix's front smtpd (milter: the gateway) -> queue -> smtp -> sink.
No content filter, no reinjection listener: the harness keeps Debian's main.cf/master.cf
and its own settings and replaces the after-queue snippets with the milter snippet.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.testing import NextHopSink, SinkBehaviour

from .postfix_gateway import GatewayRunner, GatewaySpec
from .postfix_harness import PostfixInstance, _replace_once, free_port, postfix_available

__all__ = ["MILTER_DEPLOY", "MilterGateway", "MilterPostfix", "milter_stack"]

MILTER_DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "postfix-milter"
SNIPPET_MILTER = "\nsmtpd_milters = inet:127.0.0.1:11332\n"


class MilterPostfix(PostfixInstance):
    """Postfix whose smtpd_milters / non_smtpd_milters point at ``milter_port``."""

    def __init__(self, *, sink_port: int, milter_port: int) -> None:
        super().__init__(sink_port=sink_port)
        self.milter_port = milter_port
        self.extra_main_cf = ""

    def main_cf(self) -> str:
        base = super().main_cf().split("# --- deploy/postfix/main.cf.snippet ---")[0]
        snippet = (MILTER_DEPLOY / "main.cf.snippet").read_text()
        mine = f"\nsmtpd_milters = inet:127.0.0.1:{self.milter_port}\n"
        snippet = _replace_once(snippet, SNIPPET_MILTER, mine)
        return (
            f"{base}\n# --- deploy/postfix-milter/main.cf.snippet ---\n{snippet}\n"
            f"# --- test overrides ---\n{self.extra_main_cf}\n"
        )

    def master_cf(self) -> str:
        return super().master_cf().split("# --- deploy/postfix/master.cf.snippet ---")[0]

    def configure(self, extra_main_cf: str) -> None:
        """Apply test-only main.cf lines: a restart of the master when they change.

        Not ``postfix reload``: a reload soon after start (or after another reload) on a
        busy machine sometimes left postlogd unserved, and every Postfix command that
        logs (postsuper) then blocked on the full postlog socket; and smtpd processes
        started before a reload keep serving with the old settings for a while."""
        if extra_main_cf != self.extra_main_cf:
            self.extra_main_cf = extra_main_cf
            self.stop()
            self.start()

    def sendmail(self, content: bytes, *rcpts: str, sender: str = "local@harness.test") -> None:
        """Submit locally with Postfix's sendmail (pickup -> cleanup: non_smtpd_milters)."""
        self._run_input(
            ["/usr/sbin/sendmail", "-C", str(self.config_dir), "-f", sender, *rcpts], content
        )

    def _run_input(self, args: list[str], data: bytes) -> None:
        proc = subprocess.run(args, input=data, capture_output=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr!r}")


class MilterGateway(GatewayRunner):
    """The gateway with the SMTP front off and the milter front on ``listen_port``."""

    def config_toml(self, spec: GatewaySpec) -> str:
        toml = super().config_toml(spec)
        toml = _replace_once(toml, f'listen = "127.0.0.1:{self.listen_port}"', 'listen = ""')
        return toml + f'\n[milter]\nlisten = "127.0.0.1:{self.listen_port}"\n'

    def _wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"gateway exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.listen_port), timeout=1):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"gateway did not listen within {timeout}s:\n{self.log_tail()}")


@pytest.fixture(scope="module")
def milter_stack() -> Iterator[tuple[MilterPostfix, MilterGateway, NextHopSink]]:
    """A sink, a Postfix using the milter snippet, and a (not yet started) gateway."""
    reason = postfix_available()
    if reason:
        pytest.skip(reason)
    sink = NextHopSink(SinkBehaviour(smtputf8=False)).start()
    port = free_port()
    postfix = MilterPostfix(sink_port=sink.port, milter_port=port)
    gateway = MilterGateway(listen_port=port, downstream_port=free_port())
    try:
        postfix.start()
        yield postfix, gateway, sink
    finally:
        gateway.destroy()
        postfix.destroy()
        sink.stop()
