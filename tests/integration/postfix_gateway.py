"""Run the real gateway (``python -m gateway serve``) as a subprocess for the Postfix tests.

The gateway listens on the port Postfix's ``content_filter`` points at and delivers to
Postfix's reinjection listener, as deploy/postfix/README.md tells an operator to set it
up. ``GatewayRunner.ensure(spec)`` restarts the process only when the wanted config
differs from the running one, so tests that share a config share one process.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GatewayRunner", "GatewaySpec"]

REPO = Path(__file__).resolve().parents[2]
TOKEN_ENV = "CMGW_POSTFIX_TEST_TOKEN"


@dataclass(frozen=True)
class GatewaySpec:
    """What one gateway process is configured with."""

    rules: str
    provider: str = "emulator"  # or "communications-mining" (then base_url is needed)
    base_url: str = ""
    token: str = "test-token"
    on_error: str = "deliver"
    classifier_timeout: float = 3.0
    extra_toml: str = ""
    env: tuple[tuple[str, str], ...] = field(default=())
    # Trusting loopback also makes the gateway accept Postfix's XFORWARD (test_postfix_xforward).
    trusted_networks: tuple[str, ...] = ()


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class GatewayRunner:
    """Starts/stops one gateway subprocess on ``listen_port``."""

    def __init__(self, *, listen_port: int, downstream_port: int) -> None:
        self.listen_port = listen_port
        self.downstream_port = downstream_port
        self.workdir = Path(tempfile.mkdtemp(prefix="cmgw-gw-"))
        self.log_path = self.workdir / "gateway.log"
        self.spec: GatewaySpec | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def config_toml(self, spec: GatewaySpec) -> str:
        """The gateway config for ``spec`` (README's recommended Postfix settings)."""
        classifier = [
            f"provider = {_toml_str(spec.provider)}",
            f"on_error = {_toml_str(spec.on_error)}",
            f"timeout = {spec.classifier_timeout}",
            "max_wait_ms = 0",
        ]
        if spec.provider == "communications-mining":
            classifier += [
                f"base_url = {_toml_str(spec.base_url)}",
                'project = "acme"',
                'dataset = "inbox"',
                f"token_env = {_toml_str(TOKEN_ENV)}",
            ]
        return "\n".join(
            [
                "[smtp]",
                f'listen = "127.0.0.1:{self.listen_port}"',
                'hostname = "gw.harness.test"',
                "timeout = 60",
                'relay_networks = ["127.0.0.0/8"]',
                # Behind Postfix every peer is 127.0.0.1: trusting it would keep X-CM-*
                # headers forged by any sender (deploy/postfix/README.md).
                f"trusted_networks = [{', '.join(_toml_str(n) for n in spec.trusted_networks)}]",
                # As deploy/postfix/README.md recommends: Postfix may name the original
                # client (XFORWARD) without its senders' X-CM-* headers being trusted.
                'xforward_networks = ["127.0.0.0/8"]',
                "",
                "[downstream]",
                f'url = "smtp://127.0.0.1:{self.downstream_port}"',
                "timeout = 10",
                "",
                "[classifier]",
                *classifier,
                "",
                "[rules]",
                'files = ["rules.yaml"]',
                "",
                "[metrics]",
                'listen = ""',
                "",
                "[log]",
                'level = "info"',
                'format = "json"',
                "",
                spec.extra_toml,
            ]
        )

    def ensure(self, spec: GatewaySpec) -> None:
        """Make sure a gateway configured with ``spec`` is serving."""
        if self.spec == spec and self.running:
            return
        self.stop()
        (self.workdir / "rules.yaml").write_text(spec.rules, encoding="utf-8")
        config = self.workdir / "gateway.toml"
        config.write_text(self.config_toml(spec), encoding="utf-8")
        # A CM_GATEWAY_* variable of the test run's environment would override this
        # test's config (the test switches are CMGW_*, outside that namespace).
        env = {k: v for k, v in os.environ.items() if not k.startswith("CM_GATEWAY_")}
        env[TOKEN_ENV] = spec.token
        env.update(dict(spec.env))
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--config", str(config)],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.spec = spec
        self.starts += 1
        self._wait_listening()

    @property
    def running(self) -> bool:
        """True while the subprocess is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"gateway exited at start:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.listen_port), timeout=1) as s:
                    s.settimeout(5)
                    if s.recv(512).startswith(b"220"):
                        s.sendall(b"QUIT\r\n")
                        return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"gateway did not listen within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM the gateway and wait for it to exit (SIGKILL after 15 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def destroy(self) -> None:
        """Stop the gateway and remove its working directory."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the gateway's combined stdout/stderr."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no gateway log)"
        return "\n".join(text.splitlines()[-lines:])
