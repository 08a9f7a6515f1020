"""``cm-gateway classify PATH... [--config] [--rules FILE...] [--json]``: classify mail
files in batches and print the labels (and the routing decision) per message. Sends no mail.

Messages are read lazily (``_sources``), parsed and turned into documents exactly as
the SMTP path does (``gateway.pipeline.prepare_message``), sent in batches of
``classifier.max_batch`` with up to ``classifier.max_in_flight`` batches under way, and
printed in input order. A broken file is reported on stderr and skipped; a failed batch
marks its messages ``unclassified; reason=<kind>`` and the run goes on. After an
``auth`` or ``not-found`` failure no further batch is sent (each would fail, and the
tenant would log every attempt); the remaining messages are marked the same way.

Exit status: 0 every message classified or skipped by policy (bounce, auto-submitted,
too large: the gateway would not classify them either); 1 some were not (a failed batch,
a broken file); 2 bad config or rule file, or a PATH that does not exist.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from gateway.classify import make_classifier
from gateway.config import Config, load_config
from gateway.context import CLASSIFIED, ClassificationStatus, Classifier, MessageContext
from gateway.documents import RawEmailDocument
from gateway.errors import AuthError, ClassifierError, ConfigError, NotFoundError
from gateway.logsetup import configure_logging
from gateway.predictions import DocumentPrediction, PredictionBatch
from gateway.redact import scrub

from ._sources import SourceMessage, SourceProblem, is_maildir, iter_messages

__all__ = ["ClassifiedMessage", "Tally", "classify_sources", "result_json", "run"]

_FATAL = (AuthError, NotFoundError)


@dataclass(slots=True)
class _Item:
    source: str
    ctx: MessageContext  # status/prediction filled in once the batch answers
    document: RawEmailDocument | None  # None: skipped (not sent)


@dataclass(frozen=True, slots=True)
class ClassifiedMessage:
    """One message's outcome: its context (with prediction and status) and decision."""

    source: str
    ctx: MessageContext
    decision: Any | None = None  # gateway.rules.Decision when rules are in force


@dataclass(slots=True)
class Tally:
    messages: int = 0
    classified: int = 0
    skipped: int = 0  # by policy (bounce, auto-submitted, too large): not a failure
    problems: int = 0
    requests: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    @property
    def all_classified(self) -> bool:
        """Nothing failed: every message was classified or skipped by policy."""
        return self.problems == 0 and self.classified + self.skipped == self.messages


def _prepare(source: SourceMessage, config: Config) -> _Item:
    from gateway.pipeline import prepare_message

    prepared = prepare_message(config, source.raw)
    return _Item(source.source, prepared.ctx, prepared.document)


def _with(
    ctx: MessageContext,
    prediction: DocumentPrediction | None,
    status: ClassificationStatus,
    model_version: int | None,
) -> MessageContext:
    return dataclasses.replace(
        ctx, prediction=prediction, status=status, model_version=model_version
    )


def _settle(items: list[_Item], outcome: PredictionBatch | ClassifierError) -> list[_Item]:
    sent = [item for item in items if item.document is not None]
    if isinstance(outcome, ClassifierError):
        status = ClassificationStatus("unclassified", outcome.kind)
        for item in sent:
            item.ctx = _with(item.ctx, None, status, None)
        return items
    for item, prediction in zip(sent, outcome.predictions, strict=True):
        item.ctx = _with(item.ctx, prediction, CLASSIFIED, outcome.model_version)
    return items


async def classify_sources(
    messages: Iterable[SourceMessage | SourceProblem],
    config: Config,
    classifier: Classifier,
    *,
    on_result: Callable[[ClassifiedMessage], None],
    on_problem: Callable[[SourceProblem], None],
    on_error: Callable[[ClassifierError, int], None] = lambda exc, n: None,
    ruleset: Any | None = None,
) -> Tally:
    """Classify ``messages`` in batches, calling ``on_result`` in input order."""
    settings = config.classifier
    tally = Tally()
    inflight: deque[tuple[list[_Item], asyncio.Future[PredictionBatch | ClassifierError]]] = deque()
    fatal: ClassifierError | None = None
    threshold = 0.0 if settings.threshold == "auto" else float(settings.threshold)

    async def predict(docs: list[RawEmailDocument]) -> PredictionBatch | ClassifierError:
        try:
            return await classifier.predict_raw_emails(docs)
        except ClassifierError as exc:
            return exc

    def emit(items: list[_Item]) -> None:
        for item in items:
            decision = None
            if ruleset is not None:
                decision = ruleset.evaluate(item.ctx, default_threshold=threshold)
            tally.messages += 1
            state = item.ctx.status.header_value
            tally.statuses[state] = tally.statuses.get(state, 0) + 1
            if item.ctx.status.classified:
                tally.classified += 1
            elif item.ctx.status.state == "skipped":
                tally.skipped += 1
            on_result(ClassifiedMessage(item.source, item.ctx, decision))

    async def drain_one() -> None:
        nonlocal fatal
        items, future = inflight.popleft()
        outcome = await future
        if isinstance(outcome, ClassifierError):
            on_error(outcome, sum(1 for i in items if i.document is not None))
            if isinstance(outcome, _FATAL) and fatal is None:
                fatal = outcome
        emit(_settle(items, outcome))

    def launch(items: list[_Item]) -> None:
        docs = [item.document for item in items if item.document is not None]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PredictionBatch | ClassifierError]
        if not docs:
            future = loop.create_future()
            future.set_result(PredictionBatch(predictions=()))
        elif fatal is not None:
            future = loop.create_future()
            future.set_result(fatal)
        else:
            tally.requests += 1
            future = asyncio.ensure_future(predict(docs))
        inflight.append((items, future))

    batch: list[_Item] = []
    pending_docs = 0
    for entry in messages:
        if isinstance(entry, SourceProblem):
            tally.problems += entry.failure
            on_problem(entry)
            continue
        item = _prepare(entry, config)
        batch.append(item)
        pending_docs += item.document is not None
        if pending_docs >= settings.max_batch:
            launch(batch)
            batch, pending_docs = [], 0
            # Let the request start before parsing more; keep at most max_in_flight.
            await asyncio.sleep(0)
            while len(inflight) >= settings.max_in_flight:
                await drain_one()
    if batch:
        launch(batch)
    while inflight:
        await drain_one()
    return tally


def result_json(result: ClassifiedMessage) -> dict[str, Any]:
    """The ``--json`` line of one message."""
    ctx = result.ctx
    prediction = ctx.prediction
    labels = (
        sorted(prediction.labels, key=lambda lb: (-lb.probability, lb.name)) if prediction else []
    )
    data: dict[str, Any] = {
        "source": result.source,
        "message_id": ctx.message_id,
        "labels": [{"name": lb.full_name, "probability": lb.probability} for lb in labels],
        "entities": [
            {"kind": e.entity_kind, "value": e.formatted_value}
            for e in (prediction.entities if prediction else ())
        ],
        "status": ctx.status.header_value,
        "model_version": ctx.model_version,
    }
    decision = result.decision
    if decision is not None:
        data["decision"] = {
            "verdict": decision.verdict,
            "rules": list(decision.rules_hit),
            "recipients": list(decision.recipients),
            "add_headers": [list(h) for h in decision.add_headers],
            "subject_prefixes": list(decision.subject_prefixes),
            "quarantine_address": decision.quarantine_address,
            "reply": str(decision.reply) if decision.reply else None,
            "audit": decision.audit,
        }
    return data


def _text_line(result: ClassifiedMessage) -> str:
    ctx = result.ctx
    summary = ctx.prediction.labels_summary() if ctx.prediction else ""
    line = f"{result.source}\t{ctx.status.header_value}\t{summary or '-'}"
    decision = result.decision
    if decision is not None:
        rules = f" ({', '.join(decision.rules_hit)})" if decision.rules_hit else ""
        line += f"\t-> {decision.verdict}{rules}"
    return line


def _load_ruleset(config: Config, rule_files: Sequence[str] | None) -> Any | None:
    paths: list[Path] = [Path(p) for p in rule_files] if rule_files else config.rule_paths()
    if not paths:
        return None
    from gateway.rules import load_rules

    return load_rules(paths, mode=config.rules.mode)


def _known_count(paths: Sequence[str]) -> int | None:
    """How many messages ``paths`` hold, when that is cheap to know (Maildirs: their
    entries; a single message file: one); None when an mbox or a plain directory would
    have to be read first (the bar then only counts)."""
    total = 0
    for item in paths:
        path = Path(item)
        if is_maildir(path):
            for sub in ("new", "cur"):
                with contextlib.suppress(OSError):
                    total += sum(1 for n in os.listdir(path / sub) if not n.startswith("."))
        elif path.is_file() and path.suffix.lower() != ".mbox":
            with contextlib.suppress(OSError), path.open("rb") as fh:
                if fh.read(5) == b"From ":
                    return None
            total += 1
        else:
            return None
    return total


def _progress(stream: TextIO) -> AbstractContextManager[Any]:
    if not stream.isatty():
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    return Progress(
        "classifying",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=stream),
        transient=True,
    )


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cm-gateway classify``."""
    try:
        return _run(args)
    except BrokenPipeError:
        # `classify ... | head`: the reader left; stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _run(args: argparse.Namespace) -> int:
    for path in args.paths:
        if not os.path.exists(path):
            raise ConfigError("no such file or directory", file=path)
    config = load_config(args.config)
    configure_logging(config.log.level, config.log.format)
    # mail-parser warns about every content type it does not decode; payload handles them.
    logging.getLogger("mailparser").setLevel(logging.ERROR)
    ruleset = _load_ruleset(config, args.rules)
    as_json = bool(args.json)
    out, err = sys.stdout, sys.stderr
    started = time.monotonic()

    with _progress(err) as progress:
        total = _known_count(args.paths) if progress is not None else None
        task = progress.add_task("classify", total=total) if progress is not None else None

        def say(text: str) -> None:
            if progress is not None:
                progress.console.print(text, markup=False, highlight=False)
            else:
                print(text, file=err)

        def on_result(result: ClassifiedMessage) -> None:
            if as_json:
                print(json.dumps(result_json(result), ensure_ascii=False), file=out)
            else:
                print(_text_line(result), file=out)
            if progress is not None:
                progress.advance(task)

        def on_problem(problem: SourceProblem) -> None:
            tail = " (skipped)" if problem.failure else ""
            say(f"cm-gateway classify: {problem.source}: {problem.problem}{tail}")

        def on_error(exc: ClassifierError, count: int) -> None:
            say(
                f"cm-gateway classify: {count} messages unclassified: {exc.kind}: {scrub(str(exc))}"
            )

        async def main() -> Tally:
            classifier = make_classifier(config)
            try:
                return await classify_sources(
                    iter_messages(args.paths),
                    config,
                    classifier,
                    on_result=on_result,
                    on_problem=on_problem,
                    on_error=on_error,
                    ruleset=ruleset,
                )
            finally:
                await classifier.aclose()

        tally = asyncio.run(main())
    out.flush()
    elapsed = time.monotonic() - started
    requests = f"{tally.requests} request" + ("" if tally.requests == 1 else "s")
    print(
        f"cm-gateway classify: {tally.classified} of {tally.messages} messages classified"
        + (f", {tally.skipped} skipped by policy" if tally.skipped else "")
        + f" in {requests}, {elapsed:.1f}s"
        + (f"; {tally.problems} files skipped" if tally.problems else ""),
        file=err,
    )
    return 0 if tally.all_classified else 1
