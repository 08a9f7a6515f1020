"""``cm-gateway serve``: run the gateway until SIGTERM/SIGINT (the service is ``gateway.ops``).

Prints one line ``cm-gateway listening on HOST:PORT`` to stdout once the front listens
(plus how to send a test mail when running the embedded default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.config import Config, load_config, parse_listen
from gateway.logsetup import configure_logging, get_logger

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway serve``."""
    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    # Imported here so that `cm-gateway config check` and friends stay light.
    from gateway.ops import register_secrets, run_loop, run_workers, serve

    register_secrets(config)
    embedded = args.config is None

    def how_to(address: str) -> None:
        if embedded:
            print(_how_to(config, address), flush=True)

    count, why = config.worker_count()
    if count > 1:
        return run_workers(config, args.config, count, why=why, announce=how_to)
    if why != "smtp.workers":
        get_logger("cm-gateway.serve").info("one_worker", why=why)

    def announce(address: str) -> None:
        print(f"cm-gateway listening on {address}", flush=True)
        how_to(address)

    return run_loop(serve(config, announce=announce), config.smtp.event_loop)


def _how_to(config: Config, address: str) -> str:
    host, port = parse_listen(address)
    maildir = config.downstream.maildir_path
    where = (
        f"Routed mail lands in the Maildir {(Path.cwd() / maildir).resolve()}/new"
        if maildir is not None
        else f"Routed mail goes to {config.downstream.url}"
    )
    body = "Please pay invoice INV-2041 (EUR 1,200.00) by Friday, it is overdue."
    return "\n".join(
        [
            "Embedded default: the built-in keyword model (NOT a real Communications Mining"
            " model), the shipped rules " + ", ".join(config.rules.files) + ".",
            "Send a test mail:",
            f"  swaks --server {host}:{port} --from alice@example.net --to triage@example.com"
            f" --header 'Subject: Invoice INV-2041 overdue' --body '{body}'",
            f"  python3 -c \"import smtplib; smtplib.SMTP('{host}', {port}).sendmail("
            f"'alice@example.net', ['triage@example.com'], "
            f"'Subject: Invoice INV-2041 overdue\\n\\n{body}\\n')\"",
            where,
            "Stop with Ctrl-C.",
        ]
    )
