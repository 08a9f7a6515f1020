"""deploy/systemd/cm-gateway.service: hardened, and valid for ``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "cm-gateway.service"


def _service() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return dict(parser["Service"])


def test_unit_is_hardened_and_reloads_with_sighup() -> None:
    """The unit sets the sandboxing directives, ExecReload=SIGUSR1 and a stop timeout
    longer than the 30 s drain."""
    service = _service()
    expected = {
        "Type": "exec",
        "DynamicUser": "yes",
        "StateDirectory": "cm-gateway",
        "ConfigurationDirectory": "cm-gateway",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "NoNewPrivileges": "yes",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "CapabilityBoundingSet": "",
        "SystemCallFilter": "@system-service",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "RestrictRealtime": "yes",
        "RestrictNamespaces": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "UMask": "0077",
        "Restart": "on-failure",
        "EnvironmentFile": "-/etc/cm-gateway/env",
        "ExecReload": "/bin/kill -USR1 $MAINPID",
    }
    assert {key: service.get(key) for key in expected} == expected
    assert "serve --config /etc/cm-gateway/config.toml" in service["ExecStart"]
    stop = re.fullmatch(r"(\d+)s", service["TimeoutStopSec"])
    assert stop is not None and int(stop.group(1)) > 30


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` reports nothing about the unit (skipped without it)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (Debian package: systemd)")
    unit = tmp_path / UNIT.name
    shutil.copyfile(UNIT, unit)
    result = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    about_unit = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    assert result.returncode == 0 and about_unit == [], result.stdout + result.stderr
