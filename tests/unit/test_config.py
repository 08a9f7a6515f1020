"""Config: defaults, env overrides, errors naming file and key, secrets never printed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import embedded_default, load_config
from gateway.errors import ConfigError

TENANT = """
[classifier]
base_url = "https://tenant.example/reinfer_"
project = "acme"
dataset = "inbox"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env=env
    )


def test_embedded_default_uses_the_emulator_and_a_local_maildir() -> None:
    config = embedded_default(env={})
    assert config.classifier.provider == "emulator"
    assert config.downstream.maildir_path == Path("var/maildir")
    assert config.smtp.listen == "127.0.0.1:2525"


def test_every_key_has_a_default_once_the_tenant_is_named(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, TENANT), env={})
    assert config.classifier.threshold == 0.25
    assert config.classifier.max_batch == 64
    assert config.smtp.bare_lf == "reject"
    assert config.cache.url == "memory://"


def test_a_file_without_a_tenant_names_the_keys_to_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, "[smtp]\nhostname = 'mx.example.com'\n"), env={})
    assert "base_url" in str(exc.value) and str(tmp_path / "gateway.toml") in str(exc.value)


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("[classifier]\nthreshold = 1.5", "classifier.threshold"),
        ("[classifier]\nmax_batch = 5000", "classifier.max_batch"),
        ("[classifier]\nmin_batch = 65", "classifier.min_batch"),
        ("[classifier]\ntarget_batch = 65", "classifier.target_batch"),
        ("[classifier]\nmin_batch = 8\ntarget_batch = 4", "classifier.target_batch"),
        ("[classifier]\ntarget_batch = 'fast'", "classifier.target_batch"),
        ("[classifier]\ntarget_batch = -1", "classifier.target_batch"),
        ("[classifier]\nmodel_version = 'beta'", "classifier.model_version"),
        ("[classifier]\ntransform_tag = 'nope'", "classifier.transform_tag"),
        ("[classifier]\nuser_properties = { City = 'x' }", "classifier.user_properties"),
        ("[classifier]\nuser_properties = { 'string:City' = '' }", "classifier.user_properties"),
        ("[classifier]\nuser_properties = { 'number:N' = 'x' }", "classifier.user_properties"),
        ("[smtp]\nrelay_networks = ['10.0.0.300/8']", "smtp.relay_networks"),
        ("[smtp]\nbare_lf = 'allow'", "smtp.bare_lf"),
        ("[smtp]\nlisten = 'localhost'", "smtp.listen"),
        ("[smtp]\nnot_a_key = 1", "smtp.not_a_key"),
        ("[downstream]\nurl = 'http://x'", "downstream.url"),
        ("[cache]\nurl = 'memcached://x'", "cache.url"),
        ("[cache]\nurl = 'sqlite://'", "cache.url"),
    ],
)
def test_a_bad_value_names_its_key_and_file(tmp_path: Path, snippet: str, key: str) -> None:
    text = TENANT.replace("[classifier]", "") if snippet.startswith("[classifier]") else TENANT
    body = snippet + "\n" + text if snippet.startswith("[classifier]") else TENANT + snippet
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.where == key
    assert exc.value.file == str(path)


def test_deadlines_must_fit_inside_the_smtp_timeout(tmp_path: Path) -> None:
    path = write(tmp_path, TENANT + "timeout = 100\n[downstream]\ntimeout = 250\n")
    with pytest.raises(ConfigError, match=r"smtp\.timeout"):
        load_config(path, env={})


def test_a_toml_syntax_error_gives_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, TENANT + "\n[smtp\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, env={})
    assert exc.value.where is not None and exc.value.where.startswith("7:")


def test_env_overrides_win_and_are_typed(tmp_path: Path) -> None:
    env = {
        "CM_GATEWAY_CLASSIFIER_MAX_BATCH": "128",
        "CM_GATEWAY_SMTP_LISTEN": "0.0.0.0:25",
        "CM_GATEWAY_CLASSIFIER_THRESHOLD": "auto",
        "CM_GATEWAY_SMTP_RELAY_DOMAINS": '["Example.COM"]',
    }
    config = load_config(write(tmp_path, TENANT), env=env)
    assert config.classifier.max_batch == 128
    assert config.smtp.listen == "0.0.0.0:25"
    assert config.classifier.threshold == "auto"
    assert config.smtp.relay_domains == ["example.com"]


def test_a_bad_env_override_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write(tmp_path, TENANT), env={"CM_GATEWAY_CLASSIFIER_MAX_BATCH": "0"})
    assert "CM_GATEWAY_CLASSIFIER_MAX_BATCH" in str(exc.value)
    with pytest.raises(ConfigError, match="CM_GATEWAY_SMTP_NOPE"):
        load_config(write(tmp_path, TENANT), env={"CM_GATEWAY_SMTP_NOPE": "1"})


def test_config_check_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, TENANT + "max_in_flight = -1\n")
    result = cli("config", "check", "--config", str(path))
    assert result.returncode == 2
    assert re.search(rf"{re.escape(str(path))}:\d+:classifier.max_in_flight", result.stderr)
    assert "Traceback" not in result.stderr


def test_config_show_never_prints_the_token(tmp_path: Path) -> None:
    token = "tok-3f9a8b7c6d5e4f3a2b1c"
    path = write(tmp_path, TENANT + '[cache]\nurl = "redis://:hunter2pass@localhost:6379/0"\n')
    result = cli("config", "show", "--config", str(path), env={"REINFER_TOKEN": token, "PATH": ""})
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr
    assert "hunter2pass" not in result.stdout
    assert "token: set, redacted" in result.stdout
    assert 'base_url = "https://tenant.example/reinfer_"' in result.stdout


def test_config_show_output_is_a_valid_config(tmp_path: Path) -> None:
    result = cli("config", "show", "--config", str(write(tmp_path, TENANT)), env={"PATH": ""})
    again = write(tmp_path, result.stdout)
    assert load_config(again, env={}).classifier.project == "acme"


def test_workers_are_one_per_usable_core_and_batching_is_adaptive_by_default(
    tmp_path: Path,
) -> None:
    config = load_config(write(tmp_path, TENANT), env={})
    assert config.smtp.workers == "auto"
    cores = len(os.sched_getaffinity(0))
    assert config.worker_count() == (cores, f"auto: {cores} usable core" + "s" * (cores > 1))
    assert config.classifier.target_batch == "auto"
    assert config.classifier.max_wait_ms == 200.0


@pytest.mark.parametrize(
    ("smtp", "milter", "why"),
    [
        ("127.0.0.1:0", "", "auto: smtp.listen has port 0, which workers cannot share"),
        ("127.0.0.1:2525", "127.0.0.1:11332", "auto: the milter front runs in one process"),
        ("", "unix:/run/cmgw.sock", "auto: the milter front runs in one process"),
    ],
)
def test_workers_auto_is_one_with_a_port_0_or_the_milter_front(
    tmp_path: Path, smtp: str, milter: str, why: str
) -> None:
    text = f"[smtp]\nlisten = '{smtp}'\n[milter]\nlisten = '{milter}'\n" + TENANT
    assert load_config(write(tmp_path, text), env={}).worker_count() == (1, why)


def test_workers_set_to_a_number_are_that_number_and_checked(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[smtp]\nworkers = 3\n" + TENANT), env={})
    assert config.worker_count() == (3, "smtp.workers")
    for bad in ("0", "65", "true", "'two'"):
        with pytest.raises(ConfigError, match=re.escape("workers must be 'auto' or 1..64")):
            load_config(write(tmp_path, f"[smtp]\nworkers = {bad}\n" + TENANT), env={})
    unix = "[smtp]\nworkers = 2\n[milter]\nlisten = 'unix:/run/m.sock'\n" + TENANT
    with pytest.raises(ConfigError, match=re.escape("unix socket needs smtp.workers = 1")):
        load_config(write(tmp_path, unix), env={})
