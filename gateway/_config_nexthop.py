"""The ``[downstream]`` section and its ``[downstream.routes.NAME]`` tables: where the
gateway hands mail on (``config.Config`` holds one; loading and errors live in ``config``)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from gateway._config_sections import _Section

__all__ = ["DownstreamConfig", "NextHopConfig"]

_NEXT_HOP_SCHEMES = ("smtp", "smtps", "lmtp", "lmtp+unix", "maildir")
_ROUTE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class NextHopConfig(_Section):
    """One next hop: ``[downstream]`` itself, or a ``[downstream.routes.NAME]`` table.

    ``tls``: none (never STARTTLS), opportunistic (STARTTLS when offered, certificate not
    checked), required (STARTTLS or no delivery, certificate not checked), verify
    (STARTTLS or implicit TLS with the chain checked against ``tls_ca_file`` or the
    system store, and the host name). ``smtps://`` is always encrypted. AUTH goes only
    over an encrypted connection; the password is read from ``auth_password_env``."""

    url: str = "smtp://127.0.0.1:10026"
    timeout: float = Field(60.0, gt=0)
    pool_size: int = Field(16, ge=1)
    tls: Literal["none", "opportunistic", "required", "verify"] = "opportunistic"
    tls_ca_file: str = ""
    auth_user: str = ""
    auth_password_env: str = ""

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme in ("smtp", "smtps", "lmtp"):
            if not parts.hostname or not parts.port:
                raise ValueError(f"expected {parts.scheme}://host:port, got {v!r}")
            if parts.username or parts.password:
                raise ValueError("no credentials in the URL: use auth_user and auth_password_env")
        elif parts.scheme == "lmtp+unix":
            if parts.netloc or not parts.path.startswith("/"):
                raise ValueError(f"expected lmtp+unix:///absolute/path, got {v!r}")
        elif parts.scheme == "maildir":
            if not (parts.netloc + parts.path):
                raise ValueError(f"expected maildir:///path, got {v!r}")
            if (parts.netloc + parts.path).startswith("~"):
                raise ValueError(
                    f"{v!r}: '~' is not expanded (it would be a folder named '~'); write"
                    " the absolute path, maildir:///home/..., or one relative to the config"
                )
            if parts.query or parts.fragment or "%" in v or not v.startswith("maildir://"):
                raise ValueError(
                    f"{v!r} is not a plain maildir:///path or maildir://relative/path"
                    " ('?', '#' and '%' are not part of a path here)"
                )
        else:
            schemes = ", ".join(s + "://" for s in _NEXT_HOP_SCHEMES)
            raise ValueError(f"scheme must be one of {schemes}, got {v!r}")
        return v

    @field_validator("auth_password_env")
    @classmethod
    def _env_name(cls, v: str) -> str:
        if v and not _ENV_NAME.fullmatch(v):
            raise ValueError(f"{v!r} is not an environment variable name")
        return v

    @model_validator(mode="after")
    def _auth(self) -> NextHopConfig:
        if self.tls_ca_file and not Path(self.tls_ca_file).is_file():
            raise ValueError(f"tls_ca_file {self.tls_ca_file!r}: no such file")
        if bool(self.auth_user) != bool(self.auth_password_env):
            raise ValueError("auth_user and auth_password_env must be set together")
        if self.auth_user:
            scheme = self.scheme
            if scheme in ("maildir", "lmtp+unix"):
                raise ValueError(f"auth_user has no meaning for {scheme}://")
            if scheme != "smtps" and self.tls in ("none", "opportunistic"):
                # The password would go out in clear whenever STARTTLS is missing.
                raise ValueError(
                    f'auth_user needs tls = "required" or "verify" (or smtps://), not {self.tls!r}'
                )
        return self

    @property
    def scheme(self) -> str:
        return urlsplit(self.url).scheme

    @property
    def maildir_path(self) -> Path | None:
        """The Maildir for ``maildir://`` URLs (``maildir://var/m`` is relative: to the
        config file's folder, see ``Config``; without a file, to the working directory)."""
        parts = urlsplit(self.url)
        if parts.scheme != "maildir":
            return None
        return Path(parts.netloc + parts.path)

    def auth_password(self, env: Mapping[str, str] | None = None) -> str | None:
        """The AUTH password, from the env var named by ``auth_password_env``."""
        if not self.auth_password_env:
            return None
        return (os.environ if env is None else env).get(self.auth_password_env) or None


class DownstreamConfig(NextHopConfig):
    """The default next hop and the named routes the ``route`` rule action picks."""

    routes: dict[str, NextHopConfig] = Field(default_factory=dict)

    @field_validator("routes")
    @classmethod
    def _route_names(cls, v: dict[str, NextHopConfig]) -> dict[str, NextHopConfig]:
        for name in v:
            if not _ROUTE_NAME.fullmatch(name):
                raise ValueError(f"route name {name!r}: 1-64 of A-Z a-z 0-9 _ -")
            if name == "default":
                raise ValueError("route name 'default' is reserved for [downstream] itself")
        return v
