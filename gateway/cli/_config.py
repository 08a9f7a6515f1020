"""``cm-gateway config check|show``."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from gateway.config import Config, NextHopConfig, load_config
from gateway.errors import ConfigError
from gateway.redact import scrub

from ._tomlwrite import dumps

__all__ = ["redacted", "run_check", "run_show"]


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = re.sub(r":[^:@]*@", ":[REDACTED]@", parts.netloc, count=1)
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def redacted(config: Config) -> tuple[dict[str, Any], dict[str, str]]:
    """The effective config as plain data, with passwords in URLs masked, and comments
    that say whether each secret is set (never its value)."""
    data = config.model_dump(mode="json")
    data["cache"]["url"] = _redact_url(data["cache"]["url"])
    for key in ("url", "base_url"):
        data["classifier"][key] = _redact_url(data["classifier"][key])
    data["downstream"]["url"] = _redact_url(data["downstream"]["url"])
    token = "set, redacted" if config.classifier.token() else "NOT SET"
    comments = {"classifier.token_env": f"token: {token}"}
    if config.classifier.secret_env:
        state = "set, redacted" if config.classifier.secret() else "NOT SET"
        comments["classifier.secret_env"] = f"secret: {state}"

    # Next hop passwords: like the token, only whether the variable is set.
    def password(hop: NextHopConfig) -> str:
        return "set, redacted" if hop.auth_password() else "NOT SET"

    if config.downstream.auth_password_env:
        comments["downstream.auth_password_env"] = f"password: {password(config.downstream)}"
    routes = [
        f"{name} password: {password(hop)}"
        for name, hop in config.downstream.routes.items()
        if hop.auth_password_env
    ]
    if routes:
        comments["downstream.routes"] = "; ".join(routes)
    return data, comments


def problems_beyond_the_file(config: Config) -> list[ConfigError]:
    """What ``serve`` would refuse that the config file alone does not show: rule files
    (every error in each), TLS certificate and key, the AUTH users file."""
    from gateway.rules import check_rule_files, load_rules

    problems: list[ConfigError] = list(check_rule_files(config.rule_paths()))
    if not problems:
        try:  # across files: duplicate rule names and the like
            load_rules(config.rule_paths(), mode=config.rules.mode)
        except ConfigError as exc:
            problems.append(exc)
    smtp = config.smtp
    if smtp.tls_cert_file or smtp.auth_users_file:
        from gateway.smtp import build_tls_context, load_users

        try:
            if smtp.tls_cert_file:
                build_tls_context(
                    smtp.tls_cert_file,
                    smtp.tls_key_file,
                    min_version=smtp.tls_min_version,
                    ciphers=smtp.tls_ciphers,
                )
        except ConfigError as exc:
            problems.append(exc)
        try:
            if smtp.auth_users_file:
                load_users(smtp.auth_users_file)
        except ConfigError as exc:
            problems.append(exc)
    return problems


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    source = config.source or "embedded default"
    problems = problems_beyond_the_file(config)
    for problem in problems:
        print(f"cm-gateway: {scrub(str(problem))}", file=sys.stderr)
    if problems:
        return 2
    print(f"{source}: ok")
    c = config.classifier
    if c.provider == "communications-mining" and not c.token():
        print(f"warning: {c.token_env} is not set: the API will answer 401", file=sys.stderr)
    if c.provider == "custom" and c.secret_env and not c.secret():
        print(f"warning: {c.secret_env} is not set", file=sys.stderr)
    for hop in (config.downstream, *config.downstream.routes.values()):
        if hop.auth_password_env and not hop.auth_password():
            print(f"warning: {hop.auth_password_env} is not set: AUTH will fail", file=sys.stderr)
    return 0


def run_show(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    data, comments = redacted(config)
    print(f"# effective config from {config.source or 'the embedded default'}")
    print(dumps(data, comments), end="")
    return 0
