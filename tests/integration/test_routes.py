"""Named next hops: ``[downstream.routes.NAME]`` and the ``route`` rule action, through
the pipeline to real sinks, in /readyz and metrics, and in ``rules check`` / ``explain``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gateway.metrics import GatewayMetrics
from gateway.ops._metrics_server import Readiness
from gateway.pipeline import build_processor
from gateway.testing import free_port, running_sink

from .lmtp_support import running_lmtp
from .pipeline_support import inbound, mail, make_config

ROUTE_RULES = """\
rules:
  - name: archive-copies
    when: { header: { name: X-Archive, exists: true } }
    actions:
      - add_header: { X-Routed: archive }
      - route: archive
"""


async def test_a_route_rule_sends_the_whole_message_to_that_next_hop_only(tmp_path: Path) -> None:
    """A message the rule matches goes (all recipients, headers added) to the archive
    route over LMTP; another goes to [downstream]; each pool has its metrics label."""
    with running_sink() as default, running_lmtp() as archive:
        config = make_config(
            tmp_path,
            downstream=default.url,
            rules_yaml=ROUTE_RULES,
            downstream_routes={"archive": {"url": archive.url, "timeout": 5}},
        )
        metrics = GatewayMetrics()
        pipeline = build_processor(config, metrics=metrics)
        try:
            routed = await pipeline.process(
                inbound(mail(headers=[("X-Archive", "yes")]), rcpt_tos=("a@x.test", "b@x.test"))
            )
            plain = await pipeline.process(inbound(mail(), queue_id="4QTEST2"))
            text = metrics.render().decode()
        finally:
            await pipeline.aclose()
    assert routed.code == 250 and plain.code == 250
    assert [r for r, _ in archive.delivered] == ["a@x.test", "b@x.test"]
    assert b"X-Routed: archive" in archive.delivered[0][1]
    (only,) = default.received
    assert b"X-Archive" not in only.content
    assert 'cm_gateway_downstream_connections{route="archive",state="size"}' in text
    assert 'cm_gateway_downstream_connections{route="default",state="size"}' in text


async def test_audit_mode_never_routes(tmp_path: Path) -> None:
    """rules.mode = audit: the route is evaluated, and the message still goes to
    [downstream]."""
    with running_sink() as default, running_lmtp() as archive:
        config = make_config(
            tmp_path,
            downstream=default.url,
            rules_yaml=ROUTE_RULES,
            downstream_routes={"archive": {"url": archive.url}},
            rules={"mode": "audit"},
        )
        pipeline = build_processor(config)
        try:
            reply = await pipeline.process(inbound(mail(headers=[("X-Archive", "yes")])))
        finally:
            await pipeline.aclose()
    assert reply.code == 250
    assert len(default.received) == 1 and archive.delivered == []


async def test_readyz_probes_every_route_and_names_the_one_that_is_down(tmp_path: Path) -> None:
    """/readyz checks [downstream] and each route: a route with nothing listening makes
    it not ready, under the name route:NAME."""
    with running_sink() as default, running_lmtp() as archive:
        config = make_config(
            tmp_path,
            downstream=default.url,
            rules_yaml=ROUTE_RULES,
            downstream_routes={
                "archive": {"url": archive.url},
                "oncall": {"url": f"smtp://127.0.0.1:{free_port()}"},
            },
        )
        checks = await Readiness(config, ttl=0).checks()
    assert checks["downstream"].ok
    assert checks["route:archive"].ok and "answered LHLO" in checks["route:archive"].detail
    assert not checks["route:oncall"].ok and "unreachable" in checks["route:oncall"].detail


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args], capture_output=True, text=True, env={"PATH": ""}
    )


def test_rules_check_refuses_a_route_the_config_lacks_at_file_line_column(tmp_path: Path) -> None:
    """rules check with --config: an unknown route is FILE:LINE:COL, exit 2; the same
    file passes once the route is configured."""
    rules = tmp_path / "route.yaml"
    rules.write_text(ROUTE_RULES.replace("route: archive", "route: archiv"))
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[classifier]\nprovider = "emulator"\n[rules]\nfiles = ["route.yaml"]\n'
        '[downstream.routes.archive]\nurl = "lmtp://127.0.0.1:24"\n'
    )
    result = _cli("rules", "check", "--config", str(config))
    assert result.returncode == 2
    assert f"{rules}:6:16: rule 'archive-copies': " in result.stderr
    assert "unknown route 'archiv' (did you mean 'archive'?)" in result.stderr
    rules.write_text(ROUTE_RULES)
    assert _cli("rules", "check", "--config", str(config)).returncode == 0


def test_explain_shows_the_route(tmp_path: Path) -> None:
    """explain prints which named next hop the message would take."""
    (tmp_path / "route.yaml").write_text(ROUTE_RULES)
    config = tmp_path / "gateway.toml"
    config.write_text(
        '[classifier]\nprovider = "emulator"\n[rules]\nfiles = ["route.yaml"]\n'
        '[downstream.routes.archive]\nurl = "lmtp://127.0.0.1:24"\n'
    )
    message = tmp_path / "m.eml"
    message.write_bytes(mail(headers=[("X-Archive", "yes")]))
    result = _cli("explain", "--config", str(config), str(message))
    assert result.returncode == 0, result.stderr
    assert "route" in result.stdout and "archive ([downstream.routes.archive])" in result.stdout


async def test_a_reload_naming_an_unknown_route_keeps_the_old_rules(tmp_path: Path) -> None:
    """SIGHUP reload: a rule file whose route is not configured is refused (logged with
    file and line:column); the rules in use stay."""
    with running_sink() as default, running_lmtp() as archive:
        config = make_config(
            tmp_path,
            downstream=default.url,
            rules_yaml=ROUTE_RULES,
            downstream_routes={"archive": {"url": archive.url}},
        )
        pipeline = build_processor(config)
        try:
            (tmp_path / "rules.yaml").write_text(ROUTE_RULES.replace("archive\n", "elsewhere\n"))
            assert pipeline.reload_rules(trigger="test") is False
            assert pipeline.reload_failures == 1
            reply = await pipeline.process(inbound(mail(headers=[("X-Archive", "yes")])))
        finally:
            await pipeline.aclose()
    assert reply.code == 250
    assert len(archive.delivered) == 1 and default.received == []
