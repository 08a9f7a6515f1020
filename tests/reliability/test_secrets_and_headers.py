"""Secrets and headers (issue 6, item 5).

Secrets: the real ``cm-gateway serve`` (JSON and console logs, at debug level) talks to a
hostile classifier API that echoes the ``Authorization`` header back (as is and base64)
in 401/403/422/429/500 bodies, a proxy's HTML 502, a 200 that is not JSON or not ``ok``,
label names, and a request it never answers; and to the emulator over HTTP failing every
way it can. ``config check``, ``config show``, ``serve`` with a bad value and a broken rule
file run with the token in the environment. Every byte of stdout, stderr, every SMTP
reply and every delivered message is searched for the token and its base64 forms.

Headers: hypothesis generates hostile label names (CR, LF, NUL, C0/C1 controls, U+2028,
non-ASCII, thousands of characters) served by a real HTTP classifier, and hostile rule
values (``add_header`` with ``{labels}``/``{top_label}``, ``prefix_subject``); the message
delivered at the sink has only the fields the gateway may write, each line at most 998
octets, no bare CR/LF or NUL, folded with whitespace, ASCII (RFC 2047), and no decoded
value carrying a line break: no header injection.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import smtplib
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, assume, example, given, settings
from hypothesis import strategies as st

from gateway.errors import RuleFileError
from gateway.pipeline import build_processor
from gateway.pipeline._pipeline import Pipeline
from gateway.rules import parse_rules
from gateway.testing import NextHopSink, running_emulator, running_sink
from tests.integration.pipeline_support import inbound, mail, make_config

from .secrets_support import (
    ROOT,
    GatewayProcess,
    check_header_block,
    hostile_api,
    secret_forms,
)

TOKEN = "cmgw-tok-" + secrets.token_hex(12)
TOKEN_ENV = "CMGW_TEST_TOKEN"
FAULTS = ["401", "403", "422", "429", "500", "502-html", "not-json", "not-ok", "labels",
          "slow", "redirect", "ok"]  # fmt: skip
GATEWAY_HEADERS = {"Received", "X-CM-Labels", "X-CM-Model", "X-CM-Status", "X-CM-Rules"}


def echo(headers: dict[str, str]) -> str:
    return json.dumps(headers)


def hostile(body: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse | float:
    """Answer by the ``fault=<name>`` in the first document's Subject, echoing the
    request's credentials back every way an API or a proxy might."""
    docs = body.get("documents") or [{}]
    raw = str(docs[0].get("raw_email", {}).get("headers", {}).get("raw", ""))
    match = re.search(r"fault=([\w-]+)", raw)
    fault = match.group(1) if match else "ok"
    auth = headers.get("Authorization", "")
    b64 = base64.b64encode(auth.encode()).decode()
    error = {"status": "error", "message": f"credential {auth} ({b64}) refused; {echo(headers)}"}
    count = len(docs)
    if fault in ("401", "403", "422", "429", "500"):
        extra = {"Retry-After": "0", "X-Echo": auth} if fault == "429" else {"X-Echo": auth}
        return web.json_response(error, status=int(fault), headers=extra)
    if fault == "502-html":
        page = f"<html><body><h1>502 Bad Gateway</h1><pre>{echo(headers)}</pre></body></html>"
        return web.Response(status=502, text=page, content_type="text/html")
    if fault == "not-json":
        return web.Response(status=200, text=f"oops {auth} {b64}", content_type="text/plain")
    if fault == "not-ok":
        return web.json_response(error, status=200)
    if fault == "redirect":
        return web.Response(status=307, headers={"Location": f"http://127.0.0.1:9/?t={auth}"})
    if fault == "slow":
        return 30.0
    labels = [{"name": ["Finance"], "probability": 0.9}]
    if fault == "labels":
        labels += [
            {"name": ["Leak", auth], "probability": 0.8},
            {"name": [b64], "probability": 0.7},
        ]
    return web.json_response(
        {"status": "ok", "model": {"version": 7}, "predictions": [labels for _ in range(count)]}
    )


class _FakeSink:
    """Only a URL: the CLI runs never deliver."""

    url = "smtp://127.0.0.1:9"


RULES = """
rules:
  - name: tag-everything
    actions:
      - add_header: { X-Seen-Labels: "{labels}", X-Top: "{top_label}" }
  - name: unclassified-review
    when: { unclassified: true }
    actions:
      - add_header: { X-Needs-Review: "yes" }
"""


def _gateway_config(
    tmp: Path, *, sink: NextHopSink | _FakeSink, base_url: str, log_format: str, on_error: str
) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "rules.yaml").write_text(RULES, encoding="utf-8")
    config = f"""
[smtp]
listen = "127.0.0.1:0"
hostname = "gw.test"
timeout = 60

[downstream]
url = "{sink.url}"
timeout = 10

[classifier]
base_url = "{base_url}"
project = "acme"
dataset = "inbox"
token_env = "{TOKEN_ENV}"
timeout = 1.5
max_batch = 1
max_wait_ms = 0
on_error = "{on_error}"

[rules]
files = ["rules.yaml"]

[metrics]
listen = ""

[log]
level = "debug"
format = "{log_format}"
"""
    path = tmp / "gateway.toml"
    path.write_text(config, encoding="utf-8")
    return path


def _send(port: int, fault: str) -> list[bytes]:
    """One message through the gateway; every reply line the client saw."""
    seen: list[bytes] = []
    msg = mail(subject=f"Invoice fault={fault}", body=f"Please pay. fault={fault}")
    with smtplib.SMTP("127.0.0.1", port, timeout=120) as client:
        seen.append(client.ehlo("client.test")[1])
        seen.append(client.mail("alice@example.com")[1])
        seen.append(client.rcpt("support@example.com")[1])
        try:
            code, text = client.data(msg)
        except smtplib.SMTPResponseException as exc:
            error = exc.smtp_error
            code, text = exc.smtp_code, error if isinstance(error, bytes) else error.encode()
        seen.append(f"{code} ".encode() + text)
    return seen


def _cli(tmp: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway", *args],
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _assert_no_secret(where: str, data: bytes) -> None:
    for form in secret_forms(TOKEN):
        assert form not in data, f"the token ({form[:12]!r}...) leaked into {where}"


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    return {TOKEN_ENV: TOKEN}


def test_token_never_in_logs_replies_or_mail_under_any_api_failure(
    tmp_path: Path, token_env: dict[str, str]
) -> None:
    """Two real gateways (JSON log + deliver against an API that echoes the credential
    everywhere; console log + defer against the emulator failing every way), at debug:
    the token (and its base64) is in no log byte, no SMTP reply, no delivered message."""
    with (
        running_sink() as sink,
        hostile_api(hostile) as api,
        running_emulator(
            token=TOKEN, fail_rate=1.0, fail_status="401,403,500,502-html,malformed,timeout,429"
        ) as emu,
    ):
        plans = [
            (api.base_url, "json", "deliver", FAULTS),
            (emu.base_url, "console", "defer", [f"emulator-{i}" for i in range(6)]),
        ]
        gateways = [
            GatewayProcess(
                _gateway_config(tmp_path / f"gw{i}", sink=sink, base_url=url, log_format=fmt,
                                on_error=on_error),
                token_env,
                tmp_path / f"gw{i}",
            )
            for i, (url, fmt, on_error, _) in enumerate(plans)
        ]  # fmt: skip
        try:
            ports = [gw.wait_listening() for gw in gateways]
            jobs = [
                (port, fault) for port, plan in zip(ports, plans, strict=True) for fault in plan[3]
            ]
            with ThreadPoolExecutor(max_workers=8) as pool:
                replies = list(pool.map(lambda job: _send(*job), jobs))
        finally:
            outputs = [gw.stop() for gw in gateways]
        # The hostile API really got the token, and the faults really happened.
        assert any(h.get("Authorization") == f"Bearer {TOKEN}" for h in api.seen)
    for (status, output), plan in zip(outputs, plans, strict=True):
        assert status == 0, output[-2000:]
        _assert_no_secret(f"the output of a {plan[1]} gateway", output)
    deferred = [r[-1] for r, job in zip(replies, jobs, strict=True) if job[0] == ports[1]]
    assert any(line.startswith(b"451 4.4.3") for line in deferred), deferred
    for lines in replies:
        for line in lines:
            _assert_no_secret("an SMTP reply", line)
    assert sink.received, "nothing was delivered"
    for received in sink.received:
        _assert_no_secret("a delivered message", received.content)
    json_log = outputs[0][1]
    # 5xx and 429 are retried until the 1.5 s budget ends (logged by stamina, quoting
    # the echoing body), so their final reason may be "timeout".
    for reason in (b"reason=auth", b"reason=malformed", b"reason=timeout", b"retry_scheduled"):
        assert reason in json_log, f"no {reason!r} outcome logged: the fault did not happen"


def test_token_never_in_cli_output_for_broken_config_or_rules(
    tmp_path: Path, token_env: dict[str, str]
) -> None:
    """config check with the token pasted into the file, config show, serve with a bad
    value, serve with a broken rule file: exit 2 (0 for show), no token in the output."""
    good = _gateway_config(
        tmp_path, sink=_FakeSink(), base_url="http://127.0.0.1:9", log_format="json",
        on_error="deliver",
    )  # fmt: skip
    text = good.read_text()
    cases = {
        "bad-value.toml": text.replace("timeout = 1.5", "timeout = -1"),
        "pasted.toml": text.replace('dataset = "inbox"', f'dataset = "inbox"\ntoken = "{TOKEN}"'),
        "broken-rules.toml": text.replace('"rules.yaml"', '"broken.yaml"'),
    }
    (tmp_path / "broken.yaml").write_text(f"rules:\n  - name: [\n  {TOKEN}\n", encoding="utf-8")
    for name, content in cases.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    runs = {
        "config check pasted token": (["config", "check", "--config", "pasted.toml"], 2),
        "config show": (["config", "show", "--config", "gateway.toml"], 0),
        "serve bad value": (["serve", "--config", "bad-value.toml"], 2),
        "serve broken rules": (["serve", "--config", "broken-rules.toml"], 2),
    }
    procs = {name: _cli(tmp_path, *args, env=token_env) for name, (args, _) in runs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == runs[name][1], f"{name}: exit {proc.returncode}: {err[-500:]!r}"
        _assert_no_secret(name, out + err)


# -- headers ------------------------------------------------------------------------

hostile_text = st.text(
    alphabet=st.characters(codec=None, exclude_categories=["Cs"])
    | st.sampled_from("\r\n\x00\x01\x1b\x7f\x85\x9b\u2028\u2029\t =?:,<>"),
    max_size=40,
)
long_text = st.builds(lambda a, n: a * n, hostile_text.filter(bool), st.integers(1, 200))
# Plain ASCII words joined by spaces, past 998 octets: only folding at the spaces keeps such
# a value within the limit (the strategies above almost never draw one).
spaced_ascii = st.lists(
    st.text(
        alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=4, max_size=40
    ),
    min_size=200,
    max_size=300,
).map(" ".join)
label_parts = st.lists(
    st.one_of(hostile_text.filter(bool), long_text, spaced_ascii), min_size=1, max_size=3
)
labels = st.lists(st.tuples(label_parts, st.floats(0, 1, allow_nan=False)), min_size=1, max_size=6)
rule_value = st.one_of(hostile_text, long_text, spaced_ascii).map(
    lambda s: s.replace("\r", "").replace("\n", "").replace("\x00", "")
)


def _yaml(value: str) -> str:
    """A YAML double-quoted scalar (every character outside printable ASCII escaped)."""
    out = []
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


class HeaderRig:
    """One pipeline on a loop in a thread: classifier = a real HTTP API serving whatever
    labels the current example set, next hop = a real SMTP sink."""

    def __init__(
        self, pipeline: Pipeline, loop: asyncio.AbstractEventLoop, sink: NextHopSink
    ) -> None:
        self.pipeline = pipeline
        self.loop = loop
        self.sink = sink


@pytest.fixture
def rig(tmp_path: Path, token_env: dict[str, str]) -> Iterator[tuple[HeaderRig, dict[str, Any]]]:
    current: dict[str, Any] = {"labels": []}

    def respond(body: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse:
        preds = [[{"name": n, "probability": p} for n, p in current["labels"]]]
        return web.json_response({"status": "ok", "model": {"version": 7}, "predictions": preds})

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="pipeline", daemon=True)
    thread.start()
    with running_sink() as sink, hostile_api(respond) as api:
        config = make_config(
            tmp_path,
            downstream=sink.url,
            rules_yaml="rules: []\n",
            classifier={"base_url": api.base_url, "project": "acme", "dataset": "inbox",
                        "token_env": TOKEN_ENV, "max_batch": 1, "max_wait_ms": 0},
        )  # fmt: skip

        async def build() -> Pipeline:
            return build_processor(config)

        pipeline = asyncio.run_coroutine_threadsafe(build(), loop).result(60)
        try:
            yield HeaderRig(pipeline, loop, sink), current
        finally:
            asyncio.run_coroutine_threadsafe(pipeline.aclose(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(60)
            loop.close()


@settings(
    max_examples=25,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    # data_too_large: the spaced plain-ASCII values drawn on purpose are past 998 octets.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)
@given(predicted=labels, value=rule_value, prefix=rule_value, subject=hostile_text)
@example(predicted=[(["Finance " * 150], 0.9)], value="pay now " * 150, prefix="[x] ", subject="Hi")
def test_hostile_labels_and_rule_values_never_break_the_written_headers(
    rig: tuple[HeaderRig, dict[str, Any]],
    predicted: list[tuple[list[str], float]],
    value: str,
    prefix: str,
    subject: str,
) -> None:
    """Hostile label names from a real HTTP API and hostile add_header / prefix_subject
    values: the delivered header block is well formed and has no injected field."""
    harness, current = rig
    rules = f"""
rules:
  - name: hostile
    actions:
      - add_header: {{ X-Hostile: {_yaml(value + " {labels} | {top_label}")} }}
      - prefix_subject: {_yaml(prefix)}
"""
    try:
        harness.pipeline.rules = parse_rules(rules)
    except RuleFileError:
        assume(False)  # the loader refused the value: nothing is written
    current["labels"] = predicted
    subject_line = subject.replace("\r", " ").replace("\n", " ")
    original = mail(subject=subject_line, body="Please pay the invoice. " + secrets.token_hex(8))
    before = len(harness.sink.received)
    future = asyncio.run_coroutine_threadsafe(
        harness.pipeline.process(inbound(original)), harness.loop
    )
    reply = future.result(120)
    assert reply.code == 250, reply
    delivered = harness.sink.received[before:]
    assert len(delivered) == 1
    values = check_header_block(original, delivered[0].content, GATEWAY_HEADERS | {"X-Hostile"})
    assert "X-CM-Status" in values
    if values["X-CM-Status"] == "classified":
        assert "X-CM-Labels" in values and "X-Hostile" in values
