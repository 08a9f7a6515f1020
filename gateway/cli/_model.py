"""``cm-gateway model``: the model's validation statistics and its label taxonomy.

Exit status: 0 printed; 1 the classifier failed (one line on stderr); 2 bad config
(raised as ``ConfigError`` to the CLI).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gateway.classify import model_validation
from gateway.config import load_config
from gateway.errors import ClassifierError
from gateway.logsetup import configure_logging
from gateway.predictions import ValidationSummary
from gateway.redact import scrub

__all__ = ["render_summary", "render_taxonomy", "run"]


def _value(value: float | int | str | None, quality: str | None = None) -> str:
    if value is None:
        text = "n/a"
    elif isinstance(value, float):
        text = f"{value:.2f}"
    else:
        text = str(value)
    return f"{text} ({quality})" if quality else text


def render_taxonomy(summary: ValidationSummary) -> list[str]:
    """The labels as a tree (parents first, children indented), one line each."""
    tree: dict[str, Any] = {}
    for label in summary.labels:
        node = tree
        for part in label.parts or (label.name,):
            node = node.setdefault(part, {})
    lines: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        names = sorted(node)
        for i, name in enumerate(names):
            last = i == len(names) - 1
            lines.append(f"{prefix}{'└── ' if last else '├── '}{name}")
            walk(node[name], prefix + ("    " if last else "│   "))

    walk(tree, "")
    return lines


def render_summary(description: str, summary: ValidationSummary) -> list[str]:
    """Human-readable stats, then the taxonomy tree, then the entity kinds."""
    s = summary
    lines = [
        f"model: {description} (version {s.version})",
        f"labels: {_value(s.num_labels)} ({_value(s.num_amber_labels)} amber,"
        f" {_value(s.num_red_labels)} red)   reviewed comments: {_value(s.num_reviewed_comments)}",
        f"mean average precision: {_value(s.mean_average_precision_safe)}"
        f"   dataset quality: {_value(s.dataset_quality)} (score {_value(s.dataset_score)})",
        f"balance: {_value(s.balance, s.balance_quality)}"
        f"   coverage: {_value(s.coverage, s.coverage_quality)}",
        f"all labels: {_value(s.all_labels_quality)}"
        f"   underperforming labels: {_value(s.underperforming_labels_quality)}",
        "",
        f"taxonomy ({len(s.labels)} labels):",
        *render_taxonomy(s),
    ]
    if s.entities:
        kinds = ", ".join(f"{e.name} ({e.title})" if e.title else e.name for e in s.entities)
        lines += ["", f"entities: {kinds}"]
    return lines


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway model [--config FILE] [--json]``."""
    config = load_config(args.config)
    # Log lines go to stderr: stdout carries only the answer (it may be parsed as JSON).
    configure_logging(config.log.level, config.log.format)
    try:
        description, summary = asyncio.run(model_validation(config))
    except ClassifierError as exc:
        print(f"cm-gateway model: {exc.kind}: {scrub(str(exc))}", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        data = {"model": description, **summary.model_dump(mode="json")}
        data["label_names"] = list(summary.label_names)
        print(json.dumps(data, ensure_ascii=False))
    else:
        print("\n".join(render_summary(description, summary)))
    return 0
