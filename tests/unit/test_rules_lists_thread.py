"""``lists:`` files, ``thread: {matched}``, ``remove_header``, and the conversation
memory (thread ids from References / In-Reply-To, the in-process store, the pipeline step
around the rules)."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
from pathlib import Path

import pytest

from gateway.classify import MemoryThreads
from gateway.errors import RuleFileError
from gateway.mail import remove_headers
from gateway.ops._reload import RuleReloader
from gateway.pipeline._thread import MAX_ID, ThreadStep, remembered, thread_ids
from gateway.rules import RuleSet, load_rules, parse_rules
from tests.unit.test_rules_support import context, prediction

LISTED = """\
lists:
  vip: lists/vip.txt
rules:
  - name: vip
    when: { from: { list: vip } }
    actions: [{ add_header: { X-VIP: "yes" } }]
  - name: to-vip
    when: { to: { list: vip } }
"""


def _files(tmp_path: Path, patterns: str) -> Path:
    (tmp_path / "lists").mkdir(exist_ok=True)
    (tmp_path / "lists" / "vip.txt").write_text(patterns)
    rules = tmp_path / "rules.yaml"
    rules.write_text(LISTED)
    return rules


def test_list_file_patterns_relative_to_the_rule_file_match_from_and_to(
    tmp_path: Path,
) -> None:
    """Comments and blank lines are skipped; addresses, @domains and globs match."""
    rules = _files(
        tmp_path, "# VIPs\n\nboss@example.com  # the boss\n@board.example\n*@*.vip.test\n"
    )
    ruleset = load_rules([rules])
    assert ruleset.list_files == (str(tmp_path / "lists" / "vip.txt"),)
    assert ruleset.watched_files == (str(rules), str(tmp_path / "lists" / "vip.txt"))
    for sender, expected in [
        ("Boss@Example.com", True),
        ("chair@board.example", True),
        ("x@eu.vip.test", True),
        ("x@sub.board.example", False),
        ("other@example.com", False),
    ]:
        d = ruleset.evaluate(context(prediction({}), mail_from=sender), default_threshold=0.25)
        assert d.verdicts[0].matched is expected, (sender, d.verdicts[0].why)
    d = ruleset.evaluate(
        context(prediction({}), rcpt_tos=("a@x.test", "boss@example.com")), default_threshold=0.25
    )
    assert d.verdicts[1].matched and "list vip (3 patterns)" in ruleset.rules[1].condition_text


def test_a_bad_list_line_is_refused_with_the_list_files_path_and_line(tmp_path: Path) -> None:
    """The error points into the list file, not the rule file."""
    rules = _files(tmp_path, "boss@example.com\n\n   not an address\n")
    with pytest.raises(RuleFileError) as info:
        load_rules([rules])
    assert info.value.file == str(tmp_path / "lists" / "vip.txt")
    assert info.value.where == "3:4"
    assert "list 'vip'" in info.value.message


def test_a_missing_list_file_and_an_unknown_list_name_are_refused_in_the_rule_file(
    tmp_path: Path,
) -> None:
    """Missing file: at its `lists` entry; `{list: other}`: at that key."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(LISTED)
    with pytest.raises(RuleFileError) as info:
        load_rules([rules])
    assert (info.value.file, info.value.where) == (str(rules), "2:8")
    assert "cannot read" in info.value.message
    with pytest.raises(RuleFileError) as info:
        parse_rules("rules:\n  - name: r\n    when: {from: {list: other}}\n", file="t.yaml")
    assert info.value.where == "3:25"
    assert "unknown list 'other' (lists of this file: none)" in info.value.message


def test_a_list_file_change_reloads_and_new_list_files_are_watched(tmp_path: Path) -> None:
    """The reloader watches the list files the current rules name, and updates them."""
    rules = _files(tmp_path, "boss@example.com\n")

    class Target:
        def __init__(self) -> None:
            self.rules: RuleSet = load_rules([rules])

        def rule_paths(self) -> list[Path]:
            return [Path(p) for p in self.rules.watched_files]

        def reload_rules(self, *, trigger: str) -> bool:
            self.rules = load_rules([rules])
            return True

    target = Target()
    reloader = RuleReloader(target)
    vip = tmp_path / "lists" / "vip.txt"
    vip.write_text("boss@example.com\ncarol@example.org\n")
    os.utime(vip, (2_000_000, 2_000_000))
    assert reloader.poll() is True
    ctx = context(prediction({}), mail_from="carol@example.org")
    assert target.rules.evaluate(ctx, default_threshold=0.25).verdicts[0].matched
    other = tmp_path / "lists" / "other.txt"
    other.write_text("x@example.com\n")
    rules.write_text(LISTED.replace("lists/vip.txt", "lists/other.txt"))
    os.utime(rules, (2_000_100, 2_000_100))
    assert reloader.poll() is True
    other.write_text("y@example.com\n")
    os.utime(other, (2_000_200, 2_000_200))
    assert reloader.poll() is True  # the new list file is watched


THREADED = """\
rules:
  - name: first
    when: { label: Finance }
  - name: follow
    when: { thread: { matched: first } }
"""


def test_thread_condition_holds_when_an_earlier_message_matched_the_rule() -> None:
    """thread_matched in the context decides, and the why says what was seen."""
    ruleset = parse_rules(THREADED)
    assert ruleset.thread_rules == frozenset({"first"})
    plain = context(prediction({}))
    verdict = ruleset.evaluate(plain, default_threshold=0.25).verdicts[1]
    assert (verdict.matched, verdict.why) == (
        False,
        "no earlier message of this thread matched first",
    )
    other = dataclasses.replace(plain, thread_matched=frozenset({"x"}))
    assert not ruleset.evaluate(other, default_threshold=0.25).verdicts[1].matched
    seen = dataclasses.replace(plain, thread_matched=frozenset({"first"}))
    assert ruleset.evaluate(seen, default_threshold=0.25).verdicts[1].matched


def test_thread_matched_must_name_a_rule_of_the_set() -> None:
    """A typo would never match: refused at its position, with a suggestion."""
    with pytest.raises(RuleFileError) as info:
        parse_rules(THREADED.replace("matched: first", "matched: frist"), file="t.yaml")
    assert info.value.where == "5:32"
    assert "no rule named 'frist' (did you mean 'first'?)" in info.value.message


def test_remove_header_removes_every_instance_and_refuses_structural_headers() -> None:
    """Decision.remove_headers lists the names once; the mail function drops every
    instance with its continuation lines; From, Received and X-CM-* are refused."""
    ruleset = parse_rules(
        "rules:\n  - name: a\n    actions: [{remove_header: [X-Spam-Flag, X-Old]}]\n"
        "  - name: b\n    actions: [{remove_header: x-spam-flag}]\n"
    )
    decision = ruleset.evaluate(context(prediction({})), default_threshold=0.25)
    assert decision.remove_headers == ("X-Spam-Flag", "X-Old")
    raw = (
        b"X-Spam-Flag: YES\r\nSubject: hi\r\nx-spam-flag: also\r\n folded\r\nX-Old: 1\r\n"
        b"\r\nX-Spam-Flag: body\r\n"
    )
    assert (
        remove_headers(raw, decision.remove_headers) == b"Subject: hi\r\n\r\nX-Spam-Flag: body\r\n"
    )
    for name in ("From", "Received", "X-CM-Labels", "DKIM-Signature"):
        with pytest.raises(RuleFileError, match="remove_header cannot remove"):
            parse_rules(f"rules:\n  - name: a\n    actions: [{{remove_header: {name}}}]\n")


def test_thread_ids_use_the_root_and_parent_to_look_up_and_own_id_and_root_to_record() -> None:
    """References root + In-Reply-To parent; the message's own Message-ID + the root."""
    base = context(
        prediction({}),
        headers=(
            ("References", "<root@x> <mid@x> <parent@x>"),
            ("In-Reply-To", "<parent@x>"),
        ),
    )
    ctx = dataclasses.replace(base, message_id="<me@x>")
    assert thread_ids(ctx) == (("root@x", "parent@x"), ("me@x", "root@x"))
    first = dataclasses.replace(context(prediction({})), message_id="<root@x>")
    assert thread_ids(first) == ((), ("root@x",))


def test_hostile_references_cost_bounded_work_and_oversized_ids_are_ignored() -> None:
    """100,000 ids: only both ends are read; an id over 998 characters does not count."""
    many = " ".join(f"<id{i}@x>" for i in range(100_000))
    ctx = context(prediction({}), headers=(("References", many),))
    lookup, _ = thread_ids(ctx)
    assert lookup == ("id0@x", "id99999@x")
    huge = "<" + "a" * (MAX_ID + 1) + "@x>"
    ctx = context(prediction({}), headers=(("References", huge), ("In-Reply-To", huge)))
    assert thread_ids(ctx)[0] == ()


async def test_memory_threads_remember_per_thread_until_the_ttl_and_evict_lru() -> None:
    """Union over the ids; an expired or evicted thread recalls nothing."""
    memory = MemoryThreads(ttl=60, max_entries=2)
    await memory.remember(["a", "b"], ["r1"])
    await memory.remember(["b"], ["r2"])
    assert await memory.recall(["b"]) == {"r1", "r2"}
    assert await memory.recall(["a", "zzz"]) == {"r1"}
    await memory.remember(["c"], ["r3"])  # evicts the least recently used: b
    assert await memory.recall(["b"]) == frozenset()
    expired = MemoryThreads(ttl=0.0001, max_entries=10)
    await expired.remember(["a"], ["r1"])

    await asyncio.sleep(0.01)
    assert await expired.recall(["a"]) == frozenset()


async def test_a_full_thread_memory_gives_the_garbage_collector_nothing_more_to_walk() -> None:
    """Every entry becomes untracked by the collector (a float and a tuple of str), so a
    memory of [cache] max_entries threads does not lengthen every full collection."""
    gc.collect()
    before = len(gc.get_objects())
    memory = MemoryThreads(ttl=60, max_entries=2000)
    for i in range(2000):
        await memory.remember([f"<{i}@x>", f"<root{i % 7}@x>"], ["r1", f"r{i % 3}"])
    # A tuple is untracked once a collection finds its items untracked; the inner one may
    # come later in the collector's list than the outer, so it takes two.
    gc.collect()
    gc.collect()
    assert len(gc.get_objects()) - before < 1000  # was +4,000: a tuple and a frozenset each
    assert await memory.recall(["<1999@x>"]) == {"r1"}
    assert await memory.recall(["<root0@x>"]) == {"r0", "r1", "r2"}


async def test_thread_step_records_only_the_rules_thread_conditions_name() -> None:
    """The first message's matched 'first' is recalled for its reply; others are not kept."""
    ruleset = parse_rules(THREADED + "  - name: other\n")
    step = ThreadStep(MemoryThreads(ttl=60, max_entries=100))
    first = dataclasses.replace(context(prediction({"Finance": 0.9})), message_id="<m1@x>")
    assert step.start_recall(ruleset, first) is None  # no thread to look up
    decision = ruleset.evaluate(first, default_threshold=0.25)
    await remembered(step.start_remember(ruleset, first, decision))
    reply = dataclasses.replace(
        context(prediction({}), headers=(("In-Reply-To", "<m1@x>"),)), message_id="<m2@x>"
    )
    reply = await step.recalled(step.start_recall(ruleset, reply), reply)
    assert reply.thread_matched == {"first"}
    assert ruleset.evaluate(reply, default_threshold=0.25).rules_hit == ("follow", "other")
    none = ThreadStep(None)
    assert none.start_recall(ruleset, reply) is None
    assert none.start_remember(ruleset, reply, decision) is None
