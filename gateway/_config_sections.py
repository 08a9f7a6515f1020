"""The sections of the TOML configuration (``config.Config`` holds one of each): every key
with its default and its checks. Loading, env overrides and errors live in ``config``."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import ssl
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway._cores import MAX_WORKERS

__all__ = [
    "CacheConfig",
    "ClassifierConfig",
    "LabelThreshold",
    "LogConfig",
    "MetricsConfig",
    "MilterConfig",
    "RulesConfig",
    "ShadowConfig",
    "SmtpConfig",
    "parse_listen",
]

_TRANSFORM_TAG = re.compile(r"^[A-Za-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]+$")
_PROPERTY_KEY = re.compile(r"^(string|number):\S.*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.1:2525"`` / ``"[::1]:2525"`` -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {value!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


DEFAULT_TLS_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!SHA1:!SHA256:!SHA384"


def _networks(values: list[str]) -> list[str]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError as exc:
            raise ValueError(f"{v!r} is not a network: {exc}") from None
    return values


class SmtpConfig(_Section):
    listen: str = "127.0.0.1:2525"
    hostname: str = "gateway.example.com"
    max_message_size: int = Field(36_700_160, gt=0)
    max_connections: int = Field(200, ge=1)
    # One address may not take every slot (Postfix: smtpd_client_connection_count_limit
    # and _rate_limit). relay_networks and trusted_networks are exempt. 0: no limit.
    max_connections_per_client: int = Field(50, ge=0)
    connection_rate_per_client: int = Field(600, ge=0)  # new connections per minute
    max_recipients: int = Field(1000, ge=1)
    max_hops: int = Field(30, ge=1)
    # "auto": one per usable core (gateway/_cores.py), or 1 where workers cannot share
    # the listeners (Config.worker_count).
    workers: int | Literal["auto"] = "auto"
    # uvloop does aiosmtpd's socket work in C (gateway/ops/_eventloop.py); "asyncio": stdlib.
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    timeout: float = Field(300.0, gt=0)
    relay_networks: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    relay_domains: list[str] = Field(default_factory=list)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    require_tls: bool = False
    tls_min_version: Literal["TLSv1.2", "TLSv1.3"] = "TLSv1.2"
    # OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are all AEAD and always on):
    # ECDHE with AES-GCM or ChaCha20 only, no CBC (LUCKY13) and no static RSA.
    tls_ciphers: str = DEFAULT_TLS_CIPHERS
    auth_users_file: str = ""
    bare_lf: Literal["reject", "normalize"] = "reject"
    # Empty by default, not loopback: behind Postfix every message comes
    # from loopback, so trusting it would keep X-CM-* verdicts forged by any sender.
    trusted_networks: list[str] = Field(default_factory=list)
    # Peers offered XFORWARD (Postfix's smtpd_authorized_xforward_hosts): a separate list,
    # so that Postfix in front may name the original client without its senders' X-CM-*
    # headers being trusted.
    xforward_networks: list[str] = Field(default_factory=list)
    # Header fields removed from mail of peers outside trusted_networks, besides X-CM-*
    # and every header the loaded rules can add: names, or a prefix ending in "*".
    strip_headers: list[str] = Field(default_factory=list)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:  # "" turns the SMTP front off (the milter front alone)
            parse_listen(v)
        return v

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_WORKERS:
            raise ValueError(f"workers must be 'auto' or 1..{MAX_WORKERS}, got {v!r}")
        return v

    @field_validator("relay_networks", "trusted_networks", "xforward_networks")
    @classmethod
    def _nets(cls, v: list[str]) -> list[str]:
        return _networks(v)

    @field_validator("strip_headers")
    @classmethod
    def _strip(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[!-9;-~]+\*?", name) or not name.rstrip("*"):
                raise ValueError(f"{name!r} is not a header field name (or prefix*)")
        return v

    @field_validator("tls_ciphers")
    @classmethod
    def _ciphers(cls, v: str) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.set_ciphers(v)
        except ssl.SSLError:
            raise ValueError(f"OpenSSL knows no cipher in {v!r}") from None
        return v

    @field_validator("relay_domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        return [d.lower().lstrip("@") for d in v]

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.-]{1,253}", v):
            raise ValueError(f"{v!r} is not a host name")
        return v

    @model_validator(mode="after")
    def _tls_pair(self) -> SmtpConfig:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.require_tls and not self.tls_cert_file:
            raise ValueError("require_tls needs tls_cert_file and tls_key_file")
        if self.auth_users_file and not self.tls_cert_file:
            raise ValueError("auth_users_file needs TLS (AUTH is offered over TLS only)")
        return self


class LabelThreshold(_Section):
    name: str = Field(min_length=1)
    threshold: float | None = Field(None, ge=0.0, le=1.0)


class ClassifierConfig(_Section):
    provider: Literal["communications-mining", "emulator", "custom"] = "communications-mining"
    url: str = ""
    secret_header: str = "Authorization"
    secret_env: str = ""
    base_url: str = ""
    project: str = ""
    dataset: str = ""
    model_version: int | str = "live"
    transform_tag: str = "generic.0.CONVKER5"
    token_env: str = "REINFER_TOKEN"
    threshold: float | Literal["auto"] = 0.25
    labels: list[LabelThreshold] = Field(default_factory=list)
    user_properties: dict[str, str | float] = Field(default_factory=dict)
    timeout: float = Field(10.0, gt=0)
    max_batch: int = Field(64, ge=1, le=4096)
    # A ceiling: with target_batch "auto" a batch waits at most half the API's latency.
    max_wait_ms: float = Field(200.0, ge=0)
    max_in_flight: int = Field(4, ge=1)
    send_when_idle: bool = True
    # With send_when_idle: a smaller batch waits for more (max_wait_ms at most).
    min_batch: int = Field(1, ge=1, le=4096)
    # "auto": adaptive (classify/_adaptive.py). 0: off (group commit or max_wait_ms).
    # Else a batch this big goes at once, even while another request runs.
    target_batch: int | Literal["auto"] = "auto"
    # With [smtp] workers > 1: one batcher process serves every worker (ops/_batcher_process.py),
    # so a batch holds the documents of all workers' sessions, and their dedup is one.
    shared_batcher: bool = True
    on_error: Literal["deliver", "defer"] = "deliver"
    classify_max_size: int = Field(10_485_760, ge=0)
    skip_bounces: bool = True
    skip_auto_submitted: bool = True
    emulator_taxonomy: str = ""
    # Circuit breaker (gateway.classify._circuit): open after this many consecutive failed calls
    # (0 = never open), for circuit_cooldown seconds, then one probe call.
    circuit_failures: int = Field(5, ge=0)
    circuit_cooldown: float = Field(30.0, gt=0)

    @field_validator("model_version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        if isinstance(v, bool):
            raise ValueError("model_version must be an integer, 'live' or 'staging'")
        if isinstance(v, str) and v.isdigit():
            return int(v)
        if isinstance(v, int):
            if v < 0:
                raise ValueError("model_version must not be negative")
            return v
        if v not in ("live", "staging"):
            raise ValueError(f"model_version must be an integer, 'live' or 'staging', got {v!r}")
        return v

    @property
    def deadline(self) -> float:
        """How long one message's classification may take in all: ``timeout`` (the API's
        own budget, retries included), the batch window, and a little scheduling slack."""
        return self.timeout + self.max_wait_ms / 1000 + 0.25

    @property
    def default_threshold(self) -> float:
        """The ``min_probability`` of rule label conditions that give none. With
        ``threshold = "auto"`` the model already dropped labels under their own cut-off."""
        return 0.0 if self.threshold == "auto" else float(self.threshold)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0.0 <= v <= 1.0:
            raise ValueError("threshold must be between 0 and 1, or 'auto'")
        return v

    @field_validator("transform_tag")
    @classmethod
    def _tag(cls, v: str) -> str:
        if not _TRANSFORM_TAG.match(v) or len(v) > 256:
            raise ValueError(f"transform_tag must look like name.0.ID, got {v!r}")
        return v

    @field_validator("user_properties")
    @classmethod
    def _props(cls, v: dict[str, str | float]) -> dict[str, str | float]:
        for key, value in v.items():
            if not _PROPERTY_KEY.match(key):
                raise ValueError(f"user property {key!r} must start with 'string:' or 'number:'")
            if key.startswith("string:") and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"user property {key!r} needs a non-empty string")
            if key.startswith("number:") and (
                isinstance(value, str) or not math.isfinite(float(value))
            ):
                raise ValueError(f"user property {key!r} needs a finite number")
        return v

    @field_validator("min_batch")
    @classmethod
    def _min_batch(cls, v: int, info: ValidationInfo) -> int:
        max_batch = info.data.get("max_batch")  # absent when max_batch itself was bad
        if max_batch is not None and v > max_batch:
            raise ValueError(f"min_batch ({v}) must not exceed max_batch ({max_batch})")
        return v

    @field_validator("target_batch", mode="before")
    @classmethod
    def _target_batch_kind(cls, v: Any) -> Any:
        if v != "auto" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"target_batch must be 'auto' or a number, got {v!r}")
        return v

    @field_validator("target_batch")
    @classmethod
    def _target_batch(cls, v: int | str, info: ValidationInfo) -> int | str:
        if isinstance(v, str):
            return v
        low, high = info.data.get("min_batch"), info.data.get("max_batch")
        if not 0 <= v <= 4096:
            raise ValueError(f"target_batch ({v}) must be 'auto', 0 (off) or 1..4096")
        if v and high is not None and v > high:
            raise ValueError(f"target_batch ({v}) must not exceed max_batch ({high})")
        if v and low is not None and v < low:
            raise ValueError(f"target_batch ({v}) must be 0 (off) or at least min_batch ({low})")
        return v

    @model_validator(mode="after")
    def _provider_keys(self) -> ClassifierConfig:
        if self.provider == "communications-mining":
            missing = [k for k in ("base_url", "project", "dataset") if not getattr(self, k)]
            if missing:
                raise ValueError(
                    f"{', '.join(missing)} must be set when provider = 'communications-mining'"
                )
        if self.provider == "custom" and not self.url:
            raise ValueError("url must be set when provider = 'custom'")
        for key in ("base_url", "url"):
            value = getattr(self, key)
            if value and urlsplit(value).scheme not in ("http", "https"):
                raise ValueError(f"{key} must be an http:// or https:// URL, got {value!r}")
        return self

    def token(self, env: Mapping[str, str] | None = None) -> str | None:
        """The API token, from the env var named by ``token_env`` (never the file)."""
        return (os.environ if env is None else env).get(self.token_env) or None

    def secret(self, env: Mapping[str, str] | None = None) -> str | None:
        """The custom provider's secret, from ``secret_env``."""
        if not self.secret_env:
            return None
        return (os.environ if env is None else env).get(self.secret_env) or None


class CacheConfig(_Section):
    url: str = "memory://"
    ttl: float = Field(86_400, gt=0)
    max_entries: int = Field(100_000, ge=1)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("memory", "redis", "rediss", "sqlite"):
            raise ValueError(
                f"cache url must be memory://, redis://host:port/db or sqlite:///path, got {v!r}"
            )
        if parts.scheme == "sqlite" and not (parts.netloc or parts.path):
            raise ValueError("a sqlite:// cache url needs a file: sqlite:///var/lib/x/dedup.db")
        return v


class ShadowConfig(_Section):
    model_version: int | str = ""
    sample: float = Field(0.0, ge=0.0, le=1.0)
    # Shadow calls running at once (gateway.pipeline._shadow); a sampled message over it is dropped.
    max_in_flight: int = Field(8, ge=1)


class RulesConfig(_Section):
    files: list[str] = Field(default_factory=lambda: ["rules/shared-inbox-triage.yaml"])
    mode: Literal["enforce", "audit"] = "enforce"


class MetricsConfig(_Section):
    listen: str = "127.0.0.1:9109"

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v:
            parse_listen(v)
        return v


class LogConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class MilterConfig(_Section):
    """The milter front (``gateway.milter``): off unless ``listen`` is set."""

    listen: str = ""  # "127.0.0.1:11332" or "unix:/path"; "" = off
    # A milter connection silent this long is dropped (the MTA's smtpd times out first).
    timeout: float = Field(600.0, gt=0)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        if v.startswith("unix:"):
            if not v[len("unix:") :].startswith("/"):
                raise ValueError(f"expected unix:/absolute/path, got {v!r}")
        elif v:
            parse_listen(v)
        return v
