"""The one log line per message: its fields and level, and no secret in the written line."""

from __future__ import annotations

import io
import json
import time

import pytest
from structlog.testing import capture_logs

from gateway import redact
from gateway.logsetup import configure_logging
from gateway.pipeline import InboundMessage
from gateway.pipeline._msglog import MessageLog
from gateway.replies import Reply

TOKEN = "msglog-token-9f8e7d6c"


def _msg() -> InboundMessage:
    return InboundMessage(
        mail_from="a@example.net",
        rcpt_tos=("b@example.org", "c@example.org"),
        content=b"Subject: x\r\n\r\nbody\r\n",
        peer_ip="192.0.2.7",
        helo="mx.example.net",
        smtp_utf8=False,
        mail_options=(),
        tls=False,
        authenticated_user=None,
        trusted_peer=False,
        queue_id="4QMSGLOG1",
        received_at=time.time(),
        forwarded=None,
        peer_port=40000,
        esmtp=True,
    )


@pytest.mark.parametrize(("code", "level"), [(250, "info"), (451, "warning"), (554, "warning")])
def test_one_message_event_at_the_level_of_the_reply(code: int, level: str) -> None:
    log = MessageLog(_msg())
    log.set(status="classified", labels="x" * 300)
    with log.stage("rules"):
        pass
    with capture_logs() as events:
        log.emit(Reply(code, f"{code // 100}.0.0", "text"))
    assert [e["event"] for e in events] == ["message"]
    event = events[0]
    assert event["log_level"] == level
    assert event["reply"] == f"{code} {code // 100}.0.0"
    assert (event["queue_id"], event["peer"], event["rcpts_in"]) == ("4QMSGLOG1", "192.0.2.7", 2)
    assert event["size"] == len(_msg().content)
    assert event["labels"] == "x" * 200 + "..."
    assert isinstance(event["rules_ms"], float) and isinstance(event["total_ms"], float)


def test_the_written_line_is_json_without_the_token(isolated_logging: None) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    redact.register_secret(TOKEN)
    log = MessageLog(_msg())
    log.next_hop(Reply(250, "2.0.0", f"Ok echo {TOKEN}"), "9F00A1")
    log.set(rules_hit=["a", f"b{TOKEN}"])
    log.emit(Reply(250, "2.0.0", "Ok"))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["event"] == "message" and line["level"] == "info"
    assert line["next_hop_reply"] == "2.0.0 Ok echo [REDACTED]"
    assert line["rules_hit"] == ["a", "b[REDACTED]"]
    assert TOKEN not in lines[0]


def test_a_stage_that_raises_is_timed_and_its_exception_goes_on() -> None:
    log = MessageLog(_msg())
    with pytest.raises(KeyError), log.stage("relay"):
        raise KeyError("x")
    with log.stage("parse"):
        time.sleep(0.002)
    assert isinstance(log.fields["relay_ms"], float) and log.fields["relay_ms"] >= 0
    assert log.fields["parse_ms"] >= 2.0
    assert log.fields["parse_ms"] == round(log.fields["parse_ms"], 2)
