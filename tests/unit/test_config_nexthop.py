"""The ``[downstream]`` next-hop keys: schemes, TLS modes, AUTH and named routes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.errors import ConfigError

TENANT = '[classifier]\nprovider = "emulator"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(TENANT + text)
    return path


def test_every_scheme_and_tls_key_loads_and_routes_keep_their_own_keys(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read until a connection opens\n")
    config = load_config(
        write(
            tmp_path,
            f"""
[downstream]
url = "smtps://smtp.office365.example:465"
tls = "verify"
tls_ca_file = "{ca}"
auth_user = "gateway@example.com"
auth_password_env = "M365_PASSWORD"

[downstream.routes.archive]
url = "lmtp+unix:///run/dovecot/lmtp"
tls = "none"

[downstream.routes.oncall]
url = "lmtp://127.0.0.1:24"
pool_size = 2
""",
        ),
        env={},
    )
    d = config.downstream
    assert (d.scheme, d.tls, d.auth_user) == ("smtps", "verify", "gateway@example.com")
    assert d.auth_password({"M365_PASSWORD": "x"}) == "x"
    assert d.auth_password({}) is None
    assert sorted(d.routes) == ["archive", "oncall"]
    assert d.routes["oncall"].pool_size == 2
    assert d.routes["oncall"].tls == "opportunistic"  # each key has its default


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        ('url = "ftp://x:21"', "scheme must be one of"),
        ('url = "lmtp://host"', "expected lmtp://host:port"),
        ('url = "lmtp+unix://relative/path"', "lmtp+unix:///absolute/path"),
        ('url = "smtp://user:pw@host:25"', "no credentials in the URL"),
        ('tls = "strict"', "tls"),
        ('tls_ca_file = "/nonexistent/ca.pem"', "no such file"),
        ('auth_user = "u"', "must be set together"),
        ('auth_user = "u"\nauth_password_env = "P"', 'needs tls = "required" or "verify"'),
        ('auth_user = "u"\nauth_password_env = "P"\ntls = "none"', "needs tls"),
        ('auth_password_env = "not a name"\nauth_user = "u"\ntls = "required"', "not an env"),
    ],
)
def test_a_bad_next_hop_key_is_a_config_error(tmp_path: Path, snippet: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, f"[downstream]\n{snippet}\n"), env={})
    assert message in str(err.value)
    assert "downstream" in str(err.value)


def test_a_bad_route_name_or_key_names_the_route(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(
            write(tmp_path, '[downstream.routes."bad name"]\nurl = "smtp://h:25"\n'), env={}
        )
    assert "route name 'bad name'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config(
            write(tmp_path, '[downstream.routes.a]\nurl = "smtp://h:25"\nport = 1\n'), env={}
        )
    assert "downstream.routes.a.port" in str(err.value)


def test_smtps_with_auth_needs_no_starttls_mode(tmp_path: Path) -> None:
    text = '[downstream]\nurl = "smtps://h:465"\nauth_user = "u"\nauth_password_env = "P"\n'
    assert load_config(write(tmp_path, text), env={}).downstream.auth_user == "u"


def test_config_show_says_whether_the_password_is_set_never_its_value(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[downstream]\nurl = "smtp://h:25"\ntls = "required"\nauth_user = "u"\n'
        'auth_password_env = "NH_PW"\n'
        '[downstream.routes.archive]\nurl = "smtps://a:465"\nauth_user = "v"\n'
        'auth_password_env = "NH_PW2"\n',
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "show", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"NH_PW": "hunter2-secret", "PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "password: set, redacted" in result.stdout
    assert "archive password: NOT SET" in result.stdout
    again = tmp_path / "again.toml"
    again.write_text(result.stdout)
    assert load_config(again, env={}).downstream.routes["archive"].auth_user == "v"


def test_config_check_warns_when_the_password_variable_is_not_set(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[downstream]\nurl = "smtps://h:465"\nauth_user = "u"\nauth_password_env = "NH_UNSET"\n',
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": ""},
    )
    assert result.returncode == 0, result.stderr
    assert "warning: NH_UNSET is not set: AUTH will fail" in result.stderr
