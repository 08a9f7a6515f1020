"""The TOML configuration (docs/configuration.md): a default for every key, env overrides, and
errors that name the file and the key.

    load_config(path)       -> Config      raises ConfigError (the CLI exits 2)
    embedded_default()      -> Config      what ``cm-gateway serve`` runs with no file

Secrets never live in the file: the API token is read from the environment variable
named by ``classifier.token_env`` at the moment it is needed, and ``config show`` prints
only whether it is set.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    model_validator,
)

from gateway._config_nexthop import DownstreamConfig, NextHopConfig
from gateway._config_sections import (
    CacheConfig,
    ClassifierConfig,
    LabelThreshold,
    LogConfig,
    MetricsConfig,
    MilterConfig,
    RulesConfig,
    ShadowConfig,
    SmtpConfig,
    _Section,
    parse_listen,
)
from gateway._cores import usable_cores
from gateway.errors import ConfigError
from gateway.textfile import read_text

__all__ = [
    "CacheConfig",
    "ClassifierConfig",
    "Config",
    "DownstreamConfig",
    "LabelThreshold",
    "LogConfig",
    "MetricsConfig",
    "MilterConfig",
    "NextHopConfig",
    "RulesConfig",
    "ShadowConfig",
    "SmtpConfig",
    "embedded_default",
    "load_config",
    "parse_listen",
    "shipped_rules_dir",
]

ENV_PREFIX = "CM_GATEWAY_"


class Config(_Section):
    """The whole configuration. ``source`` is the file it came from (None = defaults)."""

    smtp: SmtpConfig = Field(default_factory=SmtpConfig)
    downstream: DownstreamConfig = Field(default_factory=DownstreamConfig)
    # No default here: the key default (provider = communications-mining) needs a tenant,
    # and build_config() reports that as an error naming the keys to set.
    classifier: ClassifierConfig
    cache: CacheConfig = Field(default_factory=CacheConfig)
    shadow: ShadowConfig = Field(default_factory=ShadowConfig)
    rules: RulesConfig = Field(default_factory=RulesConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    milter: MilterConfig = Field(default_factory=MilterConfig)
    log: LogConfig = Field(default_factory=LogConfig)
    source: str | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _deadlines(self) -> Config:
        # aiosmtpd's idle timer also runs while we classify and relay: if our work can
        # outlast it, the client hangs up and retries a mail we may already have delivered.
        budget = self.classifier.timeout + self.downstream.timeout
        if budget >= self.smtp.timeout:
            raise ValueError(
                f"smtp.timeout ({self.smtp.timeout:g}s) must be greater than classifier.timeout"
                f" + downstream.timeout ({budget:g}s)"
            )
        return self

    @model_validator(mode="after")
    def _maildir_next_to_config(self) -> Config:
        # A relative maildir:// means the config file's folder, as rule files do, not
        # wherever the gateway happened to be started (the embedded default: the cwd).
        path = self.downstream.maildir_path
        if path is not None and not path.is_absolute() and self.source:
            where = (Path(self.source).resolve().parent / path).as_posix()
            self.downstream.url = f"maildir://{where}"
        return self

    @model_validator(mode="after")
    def _fronts(self) -> Config:
        if not self.smtp.listen and not self.milter.listen:
            raise ValueError("smtp.listen and milter.listen are both empty: nothing to serve")
        workers = self.smtp.workers
        if self.milter.listen.startswith("unix:") and workers != "auto" and workers > 1:
            raise ValueError(
                "milter.listen on a unix socket needs smtp.workers = 1 (use host:port to"
                " share the milter front between workers)"
            )
        return self

    def worker_count(self) -> tuple[int, str]:
        """How many worker processes ``serve`` runs, and why: ``smtp.workers`` as set, or
        for ``"auto"`` one per usable core, but 1 where workers could not share a
        listener (port 0) and when the milter front is on."""
        workers = self.smtp.workers
        if workers != "auto":
            return workers, "smtp.workers"
        if self.milter.listen:
            # Behind Postfix's milter client two workers, in about one test run in four,
            # once left an MTA session waiting 60 s after a restart and once answered a
            # message 451 4.3.0; one process never did. Until that is understood.
            return 1, "auto: the milter front runs in one process"
        if (key := self.port_zero_listener()) is not None:
            return 1, f"auto: {key} has port 0, which workers cannot share"
        cores = usable_cores()
        return cores, f"auto: {cores} usable core" + ("s" if cores > 1 else "")

    def port_zero_listener(self) -> str | None:
        """The key (``smtp.listen``, ``milter.listen``) that asks for port 0, which each
        process would bind anew: workers cannot share it."""
        for key, listen in (
            ("smtp.listen", self.smtp.listen),
            ("milter.listen", self.milter.listen),
        ):
            if listen and not listen.startswith("unix:") and parse_listen(listen)[1] == 0:
                return key
        return None

    def rule_paths(self) -> list[Path]:
        """``rules.files`` resolved: absolute; else next to the config file; else the
        working directory; else the rule sets shipped with cm-gateway."""
        base = Path(self.source).parent if self.source else None
        return [resolve_rule_path(f, base) for f in self.rules.files]


def shipped_rules_dir() -> Path:
    """Where the shipped rule sets live (in a wheel, or the source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "shipped_rules", here.parent / "rules"):
        if candidate.is_dir():
            return candidate
    return here.parent / "rules"


def resolve_rule_path(name: str, base: Path | None) -> Path:
    path = Path(name)
    if path.is_absolute():
        return path
    for root in (base, Path.cwd()):
        if root is not None and (root / path).exists():
            return root / path
    shipped = shipped_rules_dir()
    for candidate in (shipped / path, shipped / path.name):
        if candidate.exists():
            return candidate
    return (base or Path.cwd()) / path


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The section model that holds the last key of ``loc`` (None past a list)."""
    model: Any = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model if isinstance(model, type) else None


def _suggestion(loc: tuple[Any, ...]) -> str:
    model = _model_at(loc)
    if model is None or not isinstance(loc[-1], str):
        return ""
    known = [k for k in model.model_fields if k != "source"]
    close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def toml_key_line(text: str, loc: Sequence[Any]) -> int | None:
    """The line of ``[section]`` ``key = ...`` (or of the ``[section]`` header alone) in a
    TOML text; None when it cannot be found (an env override, a default, a list item)."""
    section = str(loc[0]) if loc else ""
    key = str(loc[1]) if len(loc) > 1 else None
    table = ""
    header_line = None
    for number, line in enumerate(text.splitlines(), start=1):
        match = _TOML_TABLE.match(line)
        if match:
            table = match.group(1).strip().strip("\"'")
            if table == section and header_line is None:
                header_line = number
            continue
        match = _TOML_KEY.match(line)
        if match is None:
            continue
        name = match.group(1).strip("\"'")
        dotted = f"{table}.{name}" if table else name
        if key is not None and dotted == f"{section}.{key}":
            return number
        if key is None and not table and name == section:
            return number
    return header_line


_TOML_TABLE = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_TOML_KEY = re.compile(r"^\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


def _error_from_validation(
    exc: ValidationError, file: str | None, text: str | None = None
) -> ConfigError:
    """Every problem pydantic found, one per line (the first also in ``where``), each with
    its line in ``text`` when found and a "did you mean" for an unknown key."""
    problems: list[ConfigError] = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key" + _suggestion(loc)
        elif err["type"] == "missing":
            msg = "missing"
        where = ".".join(str(p) for p in loc) or None
        line = toml_key_line(text, loc) if text is not None and loc else None
        problems.append(ConfigError(msg, file=file, where=where, line=line))
    first = problems[0]
    message = "".join([first.message, *(f"\n{e}" for e in problems[1:])])
    return ConfigError(message, file=file, where=first.where, line=first.line)


def _parse_env_value(raw: str) -> Any:
    # Env values are TOML literals when they parse as one (numbers, booleans, arrays,
    # inline tables), and plain strings otherwise, so `CM_GATEWAY_SMTP_LISTEN=0.0.0.0:25`
    # needs no quoting.
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> list[str]:
    applied: list[str] = []
    sections = set(Config.model_fields) - {"source"}
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in sections or not key:
            raise ConfigError("no such config section", file=f"env {name}")
        model = Config.model_fields[section].annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        if key not in model.model_fields:
            raise ConfigError(f"no such key {section}.{key}", file=f"env {name}")
        data.setdefault(section, {})[key] = _parse_env_value(env[name])
        applied.append(name)
    return applied


def build_config(
    data: dict[str, Any],
    *,
    file: str | None,
    env: Mapping[str, str] | None = None,
    text: str | None = None,
) -> Config:
    """Validate a parsed TOML document, with env overrides applied on top."""
    env = os.environ if env is None else env
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    data.setdefault("classifier", {})
    overridden = _apply_env(data, env)
    try:
        config = Config.model_validate({**data, "source": file})
    except ValidationError as exc:
        err = _error_from_validation(exc, file, text)
        if err.where:
            env_name = ENV_PREFIX + err.where.split(".")[0].upper() + "_"
            env_name += err.where.split(".")[1].upper() if "." in err.where else ""
            if env_name in overridden:
                err = ConfigError(err.message, file=f"env {env_name}", where=err.where)
        raise err from None
    return config


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Load ``path`` (None = the embedded default), apply env overrides, validate."""
    if path is None:
        return embedded_default(env)
    file = str(path)
    text = read_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        where = f"{match.group(1)}:{match.group(2)}" if match else None
        raise ConfigError(
            re.sub(r"\s*\(at line.*\)", "", str(exc)) or "not TOML", file=file, where=where
        ) from None
    return build_config(data, file=file, env=env, text=text)


EMBEDDED_DEFAULT: dict[str, Any] = {
    "smtp": {"listen": "127.0.0.1:2525", "hostname": "localhost"},
    "downstream": {"url": "maildir://var/maildir"},
    "classifier": {"provider": "emulator"},
    "rules": {"files": ["rules/shared-inbox-triage.yaml"]},
}


def embedded_default(env: Mapping[str, str] | None = None) -> Config:
    """The configuration of ``cm-gateway serve`` with no ``--config``: the in-process
    emulator model, the shipped triage rules, delivery into ``./var/maildir``."""
    return build_config(EMBEDDED_DEFAULT, file=None, env=env)
