"""deploy/systemd/cm-gateway.service: hardened, and valid for ``systemd-analyze verify``."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "deploy" / "systemd" / "cm-gateway.service"


def _service() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT, encoding="utf-8")
    return dict(parser["Service"])


def test_unit_is_hardened_and_reloads_with_sigusr1() -> None:
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


def test_the_install_steps_use_only_what_the_checkout_ships_and_agree_on_ports(
    tmp_path: Path,
) -> None:
    """deploy/systemd/README.md: no `pip install cm-gateway` (not published); every file
    it installs exists in the checkout; the unit's Documentation= files are among them;
    the config it installs passes `config check` once its rule file sits beside it, and
    listens where Postfix's content_filter sends (and hands back where master.cf listens)."""
    root = UNIT.parents[2]
    readme = (UNIT.parent / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"pip install cm-gateway\b", readme)
    installs = re.findall(r"^\s*install (?:-D )?-m \d+ (\S+) (\S+)$", readme, flags=re.M)
    assert installs
    for source, _dest in installs:
        assert source == "/dev/null" or (root / source).is_file(), source
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.read(UNIT, encoding="utf-8")
    docs = parser["Unit"]["Documentation"].split()
    destinations = {dest for _source, dest in installs}
    for url in docs:
        assert url.startswith("file://") and url.removeprefix("file://") in destinations, url
    config_source = next(s for s, d in installs if d == "/etc/cm-gateway/config.toml")
    for source, dest in installs:  # /etc/cm-gateway as the steps leave it
        if dest.startswith("/etc/cm-gateway/") and source != "/dev/null":
            target = tmp_path / dest.removeprefix("/etc/cm-gateway/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / source, target)
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", "--config", "config.toml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=120,
    )
    assert check.returncode == 0, check.stderr
    config = tomllib.loads((root / config_source).read_text(encoding="utf-8"))
    main_cf = (root / "deploy" / "postfix" / "main.cf.snippet").read_text(encoding="utf-8")
    master_cf = (root / "deploy" / "postfix" / "master.cf.snippet").read_text(encoding="utf-8")
    content_filter = re.search(r"^content_filter = \S+:\[([\d.]+)\]:(\d+)", main_cf, re.M)
    assert content_filter is not None
    assert config["smtp"]["listen"] == f"{content_filter.group(1)}:{content_filter.group(2)}"
    reinject = re.search(r"^([\d.]+:\d+) inet", master_cf, re.M)
    assert reinject is not None
    assert config["downstream"]["url"] == f"smtp://{reinject.group(1)}"
    assert f"listening on {config['smtp']['listen']}" in readme
