"""Pure lock decisions: current record + request -> new record or refusal."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from protea_supervisor.errors import LockContention, LockCorrupt, LockMismatch, UsageError
from protea_supervisor.locks.stack_owner import (
    FREE,
    LockRecord,
    decide_acquire,
    decide_release,
    parse_record,
    timestamp,
)

NOW = datetime(2026, 5, 20, 14, 0, 0, 123456, tzinfo=UTC)
EXPORT = LockRecord("export", "farm-exp-13", "2026-05-20T14:00:00+00:00", "FARM-EXP.13 sweep")


def test_timestamp_is_utc_to_the_second() -> None:
    assert timestamp(NOW) == "2026-05-20T14:00:00+00:00"
    assert timestamp(NOW.astimezone(timezone(timedelta(hours=2)))) == "2026-05-20T14:00:00+00:00"


def test_acquire_free_lock() -> None:
    assert decide_acquire(FREE, "export", "farm-exp-13", "FARM-EXP.13 sweep", NOW) == EXPORT


def test_acquire_is_idempotent_for_same_owner_and_task() -> None:
    later = NOW + timedelta(hours=1)
    assert decide_acquire(EXPORT, "export", "farm-exp-13", "other words", later) is EXPORT


@pytest.mark.parametrize(
    ("owner", "task"), [("deploy", "deploy-tick"), ("export", "farm-exp-14"), ("deploy", "farm-exp-13")]
)
def test_acquire_held_lock_is_contention_naming_holder(owner: str, task: str) -> None:
    with pytest.raises(LockContention, match="held by export task farm-exp-13 since 2026-05-20T14:00:00"):
        decide_acquire(EXPORT, owner, task, "r", NOW)


@pytest.mark.parametrize(("owner", "task"), [("free", "t"), ("janitor", "t"), ("export", "")])
def test_acquire_bad_arguments(owner: str, task: str) -> None:
    with pytest.raises(UsageError):
        decide_acquire(FREE, owner, task, "r", NOW)


def test_release_by_holder_writes_the_shell_tools_free_record() -> None:
    assert decide_release(EXPORT, "farm-exp-13", NOW) == LockRecord(
        "free", "", "2026-05-20T14:00:00+00:00", "released by farm-exp-13"
    )


def test_release_of_free_lock_is_nothing_to_do() -> None:
    assert decide_release(FREE, "anyone", NOW) is None


def test_release_by_another_task_is_a_mismatch() -> None:
    with pytest.raises(LockMismatch, match="task deploy-tick does not hold"):
        decide_release(EXPORT, "deploy-tick", NOW)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "[]",
        '{"owner": "free"}',
        '{"owner": "nobody", "task_id": "", "acquired_at": "", "reason": ""}',
        '{"owner": 1, "task_id": "", "acquired_at": "", "reason": ""}',
    ],
)
def test_corrupt_record_is_never_free(text: str) -> None:
    with pytest.raises(LockCorrupt, match=r"/state/stack-owner.json"):
        parse_record(text, Path("/state/stack-owner.json"))
