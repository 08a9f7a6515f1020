"""``cm-gateway``: the command line (README "Commands").

Each command lives in its own module and is imported only when run, so that
``cm-gateway config check`` starts fast and does not need the SMTP stack.
Exit status: 0 ok, 1 the command ran and found problems, 2 bad usage, config or rule file.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from datetime import datetime

from gateway import __version__
from gateway.errors import ConfigError
from gateway.redact import scrub

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_CONFIG = 2


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE", help="TOML config (default: the embedded default)"
    )


def _moment(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {value!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError("the time needs a UTC offset (e.g. +00:00 or Z)")
    return moment


def _port(text: str) -> int:
    """A TCP port for argparse: 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cm-gateway",
        description="SMTP relay that classifies mail with Communications Mining and routes it.",
    )
    parser.add_argument("--version", action="version", version=f"cm-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway")
    _add_config(p)
    p.set_defaults(handler="gateway.cli._serve:run")

    p = sub.add_parser(
        "classify",
        help="classify .eml, mbox and Maildir; send no mail",
        description="Classify mail files and print each message's labels (and the rules'"
        " decision). Sends no mail. Exit 0 when every message was classified or skipped by"
        " policy, 1 when some were not, 2 on a bad config, rule file or PATH.",
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="a message file (any name), an mbox (first line 'From ' or *.mbox), a Maildir"
        " (has cur/ or new/), or a directory: searched recursively for *.eml and *.mbox"
        " only (other files are listed as not read)",
    )
    _add_config(p)
    p.add_argument("--rules", nargs="+", metavar="FILE", help="rule files (default: config)")
    p.add_argument("--json", action="store_true", help="one JSON line per message")
    p.set_defaults(handler="gateway.cli._classify:run")

    p = sub.add_parser("explain", help="show what the gateway would do with one message")
    p.add_argument("file", metavar="FILE.eml", help="one message (an mbox of one message too)")
    _add_config(p)
    p.add_argument("--predictions", metavar="JSON", help="use these predictions, not the model")
    p.add_argument("--rules", nargs="+", metavar="FILE", help="rule files (default: config)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--at", type=_moment, metavar="ISO-TIME", help="the time the rules see")
    p.add_argument(
        "--thread-matched", nargs="+", metavar="RULE", help="rules earlier messages matched"
    )
    p.set_defaults(handler="gateway.cli._explain:run")

    p = sub.add_parser("rules", help="rule files")
    rsub = p.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    rc = rsub.add_parser("check", help="validate rule files")
    rc.add_argument("files", nargs="*", metavar="FILE", help="rule files (default: the config's)")
    _add_config(rc)
    rc.add_argument(
        "--against-model", action="store_true", help="flag labels the model does not know"
    )
    rc.set_defaults(handler="gateway.cli._rules:run_check")
    rt = rsub.add_parser("test", help="run rule test files (expectations on messages)")
    rt.add_argument("files", nargs="+", metavar="FILE", help="rule test files (YAML)")
    _add_config(rt)
    rt.add_argument("--json", action="store_true", help="one JSON object")
    rt.set_defaults(handler="gateway.cli._rule_tests:run")

    p = sub.add_parser("emulate", help="run the local Communications Mining emulator")
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=_port, default=8000, help="port to listen on, 0-65535 (default: %(default)s)"
    )
    p.add_argument(
        "--latency-ms", type=float, default=0.0, help="added to every answer, in milliseconds"
    )
    p.add_argument("--fail-rate", type=float, default=0.0, help="share of calls that fail")
    p.add_argument(
        "--fail-status",
        default="503",
        help="how they fail: an HTTP status (429 adds Retry-After), '502-html', 'timeout' or "
        "'malformed' (-json / -shape); several, comma-separated, are picked at random",
    )
    p.add_argument("--retry-after", type=float, default=1.0, help="seconds, for 429")
    p.add_argument("--token", default=None, help="accepted Bearer token (default: $REINFER_TOKEN)")
    p.add_argument("--taxonomy", default=None, metavar="YAML", help="keyword model to serve")
    p.add_argument("--seed", type=int, default=None, help="seed for fault injection")
    p.set_defaults(handler="gateway.cli._emulate:run")

    p = sub.add_parser("model", help="print the model's validation stats and taxonomy")
    _add_config(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler="gateway.cli._model:run")

    p = sub.add_parser("config", help="validate or show the configuration")
    csub = p.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    for name, help_ in (("check", "validate the config"), ("show", "print the effective config")):
        cp = csub.add_parser(name, help=help_)
        _add_config(cp)
        cp.set_defaults(handler=f"gateway.cli._config:run_{name}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cm-gateway`` console script."""
    args = build_parser().parse_args(argv)
    module_name, _, func_name = args.handler.partition(":")
    func = getattr(importlib.import_module(module_name), func_name)
    try:
        return int(func(args))
    except ConfigError as exc:
        print(f"cm-gateway: {scrub(str(exc))}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
