"""The release history: entries kept whole and bounded, read back only when complete, listed newest first."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from protea_supervisor.deploy.releases import (
    HISTORY_FILE,
    NoTarget,
    Release,
    append,
    read_history,
    rollback_target,
    table,
)

ENTRY = Release(revision="a" * 40, previous="b" * 40, started_at="2026-12-01T07:00:00+00:00", duration_s=12.3,
                result="deployed", exit=10, installed=False, built=True, failed_step="", trigger="by hand (ops)",
                summary="deployed aaaaaaa")  # fmt: skip
NOW = 1_796_108_460.0  # 2026-12-01T07:01:00Z


def test_entries_are_appended_newest_last_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    for n in range(5):
        append(tmp_path, replace(ENTRY, revision=str(n) * 40), keep=3)
    assert [r.revision[0] for r in read_history(tmp_path)] == ["2", "3", "4"]


def test_a_damaged_file_or_entry_is_skipped_not_fatal(tmp_path: Path) -> None:
    assert read_history(tmp_path) == []
    (tmp_path / HISTORY_FILE).write_text("[not json")
    assert read_history(tmp_path) == []
    (tmp_path / HISTORY_FILE).write_text(json.dumps([{"revision": "x"}, 3, ENTRY.__dict__]))
    assert read_history(tmp_path) == [ENTRY]


def test_the_table_reads_newest_first_with_its_work_and_trigger() -> None:
    failed = replace(ENTRY, revision="c" * 40, result="rolled back", exit=20, failed_step="verify",
                     installed=True, trigger="timer (trigger:new-commit)")  # fmt: skip
    lines = table([ENTRY, failed], NOW).splitlines()
    assert lines[0].split() == ["WHEN", "REVISION", "RESULT", "TOOK", "WORK", "TRIGGER"]
    assert lines[1].startswith("2026-12-01T07:00:00Z (60 s ago)") and "cccccccccc" in lines[1]
    assert "rolled back at verify" in lines[1] and "install+build" in lines[1]
    assert lines[1].endswith("timer (trigger:new-commit)")
    assert "aaaaaaaaaa" in lines[2] and "build " in lines[2] and "12.3s" in lines[2]
    assert table([], NOW) == "no deploys recorded yet (a tick that deploys adds one)"


def test_rollback_picks_the_newest_earlier_good_revision_or_the_one_asked_for() -> None:
    a, b, c, d = (x * 40 for x in "abcd")
    history = [replace(ENTRY, revision=a), replace(ENTRY, revision=b),
               replace(ENTRY, revision=c, result="rolled back", exit=20), replace(ENTRY, revision=d)]  # fmt: skip
    assert rollback_target(history, d) == b  # c never served
    assert rollback_target(history, d, "aaaa") == a
    assert rollback_target(history, d, "AAAAAAAA") == a
    for asked, why in (("cccc", "never deployed successfully"), ("dddd", "deployed now"), ("ab", "at least 4"),
                       ("zzzz", "at least 4 hex")):  # fmt: skip
        with pytest.raises(NoTarget, match=why):
            rollback_target(history, d, asked)
    with pytest.raises(NoTarget, match="no earlier revision"):
        rollback_target([replace(ENTRY, revision=d)], d)
    twins = [replace(ENTRY, revision="abcd" + "1" * 36), replace(ENTRY, revision="abcd" + "2" * 36)]
    with pytest.raises(NoTarget, match="matches 2"):
        rollback_target(twins, d, "abcd")
