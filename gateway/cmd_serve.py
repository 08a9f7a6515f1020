"""``cm-gateway serve`` (placeholder until the SMTP path lands: prints the plan)."""

from __future__ import annotations

import argparse

from .config import load_config

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    print(
        f"cm-gateway would listen on {config.smtp.listen}, classify with "
        f"{config.classifier.provider}, apply {', '.join(config.rules.files)} and deliver to "
        f"{config.downstream.url} (the SMTP server is not built yet)"
    )
    return 0
