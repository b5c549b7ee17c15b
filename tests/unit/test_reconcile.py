"""Count-only changes vs real ones, the reload plan, and `scale`'s count arithmetic."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protea_supervisor.supervisord.reconcile import (
    GroupDiff,
    ReloadPlan,
    describe_plan,
    diff_group,
    plan_from_document,
    scaled_count,
)


def configs(program: str, count: int, command: str = "run") -> list[tuple[str, object]]:
    return [(f"{program}-{n}", (command, n)) for n in range(1, count + 1)]


def test_growing_adds_only_the_new_numbers_and_keeps_the_rest() -> None:
    diff = diff_group(dict(configs("w", 2)), configs("w", 4))
    assert diff == GroupDiff(unchanged=("w-1", "w-2"), added=("w-3", "w-4"), removed=(), changed=())
    assert diff.count_only


def test_shrinking_removes_the_highest_numbers_in_numeric_order() -> None:
    diff = diff_group(dict(configs("w", 11)), configs("w", 8))
    assert diff.removed == ("w-9", "w-10", "w-11") and diff.count_only and len(diff.unchanged) == 8


def test_a_changed_command_is_not_count_only() -> None:
    diff = diff_group(dict(configs("w", 2)), configs("w", 3, command="run --new"))
    assert diff.changed == ("w-1", "w-2") and not diff.count_only


def test_renaming_an_unnumbered_worker_is_a_remove_and_an_add() -> None:
    diff = diff_group({"worker-ping": ("run", 0)}, configs("worker-ping", 2))
    assert diff.removed == ("worker-ping",) and diff.added == ("worker-ping-1", "worker-ping-2")


def test_identical_is_neither_count_only_nor_changed() -> None:
    diff = diff_group(dict(configs("w", 3)), configs("w", 3))
    assert diff.identical and not diff.count_only


@given(before=st.integers(0, 30), after=st.integers(0, 30))
def test_any_resize_keeps_the_common_prefix_and_accounts_for_every_process(before: int, after: int) -> None:
    diff = diff_group(dict(configs("w", before)), configs("w", after))
    assert len(diff.unchanged) == min(before, after)
    assert len(diff.added) == max(0, after - before) and len(diff.removed) == max(0, before - after)
    assert set(diff.unchanged) | set(diff.removed) == {f"w-{n}" for n in range(1, before + 1)}


@pytest.mark.parametrize(
    ("current", "spec", "expected"),
    [(2, "4", 4), (2, "+1", 3), (4, "-2", 2), (3, "0", 0), (3, "+0", 3), (1, " 5 ", 5)],
)
def test_scaled_count(current: int, spec: str, expected: int) -> None:
    assert scaled_count(current, spec, 100) == expected


@pytest.mark.parametrize(
    ("current", "spec", "message"),
    [
        (2, "-3", "would leave -1"),
        (2, "four", "N, +N or -N"),
        (2, "101", "more than the maximum of 100 per queue"),
        (99, "+2", "more than the maximum of 100 per queue"),
        (2, "99999999999999999999", "N at most 100"),
        (2, "1e3", "N, +N or -N"),
        (2, "٣", "N, +N or -N"),  # a digit int() would take, in another script
    ],
)
def test_scaled_count_refuses(current: int, spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        scaled_count(current, spec, 100)


def test_plan_document_round_trip_and_description_in_apply_order() -> None:
    doc = {
        "added": ["worker-new"],
        "removed": ["worker-old"],
        "scaled": {"worker-b": {"unchanged": ["worker-b-1"], "added": ["worker-b-2"], "removed": []}},
        "changed": ["web", "api"],
        "unchanged": ["gate", "tunnel"],
        "priority": {"api": 100, "web": 500, "worker-new": 300},
    }
    plan = plan_from_document(doc)
    assert plan.in_start_order(plan.changed) == ["api", "web"]
    assert describe_plan(plan) == [
        "scale    worker-b: adds worker-b-2; 1 untouched",
        "remove   worker-old",
        "restart  api",
        "restart  web",
        "add      worker-new",
        "untouched: 2 program(s)",
    ]
    # The API on a socket supervisord holds is replaced start-first, and the plan says so.
    assert (
        describe_plan(plan, {"api"})[2]
        == "replace  api (start-first on its socket; restarted if it cannot be)"
    )


def test_an_empty_plan_says_so() -> None:
    plan = ReloadPlan(added=(), removed=(), scaled=(), changed=(), unchanged=("api",))
    assert plan.empty and describe_plan(plan) == [
        "nothing to do: the running stack matches the rendered config"
    ]
