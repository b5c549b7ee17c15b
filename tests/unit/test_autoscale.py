"""The autoscaler's decisions, replayed from readings: prompt up, slow down, frozen when the broker is gone,
suspended scale-down during an export, pinned queues left alone, other hosts' processes counted."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protea_supervisor.operations.autoscale import QueueState, Reading, decide, wanted_here
from protea_supervisor.stackfile.stack import Autoscale

AUTO = Autoscale(min=1, max=6, target_backlog=10, scale_up_delay=5, scale_down_window=30, cooldown=10)


def replay(readings: list[tuple[float, Reading]], start: int = 1) -> list[tuple[float, int]]:
    """Each reading at its time; `here` follows the decisions (a change lands before the next reading)."""
    state, here, changes = QueueState(), start, []
    for now, reading in readings:
        state, decision = decide(AUTO, state, Reading(**{**reading.__dict__, "here": here}), now)
        if decision.count is not None and decision.count != here:
            here = decision.count
            changes.append((now, here))
    return changes


def backlog(*values: int | None, every: float = 5.0) -> list[tuple[float, Reading]]:
    return [(i * every, Reading(backlog=v, here=0)) for i, v in enumerate(values)]


def test_a_burst_scales_up_once_it_has_been_wanted_for_the_delay_and_within_max() -> None:
    assert replay(backlog(0, 200, 200, 200)) == [(10.0, 6)]


def test_a_dip_inside_the_window_never_scales_down() -> None:
    changes = replay(backlog(200, 200, 5, 200, 5, 200, 190, 180))
    assert changes == [(5.0, 6)]


def test_scale_down_waits_for_the_window_and_takes_its_highest_want() -> None:
    # Up to 6 at t=5; the backlog falls to 25 (wants 3) from t=15, then to 0 (wants min 1) from t=50. The
    # last want of 6 (t=10) leaves the 30 s window at t=40, the last want of 3 (t=45) at t=75.
    readings = backlog(200, 200, 200, 25, 25, 25, 25, 25, 25, 25, 0, 0, 0, 0, 0, 0, 0, 0)
    assert replay(readings) == [(5.0, 6), (40.0, 3), (75.0, 1)]


def test_no_change_follows_another_within_the_cooldown() -> None:
    slow = Autoscale(min=1, max=6, target_backlog=10, scale_up_delay=0, scale_down_window=0.1, cooldown=20)
    state = QueueState()
    state, first = decide(slow, state, Reading(backlog=20, here=1), 0.0)
    assert first.count == 2
    state, second = decide(slow, state, Reading(backlog=60, here=2), 10.0)
    assert second.count is None and "cooldown" in second.why
    state, third = decide(slow, state, Reading(backlog=60, here=2), 20.0)
    assert third.count == 6


def test_a_broker_that_does_not_answer_freezes_the_count() -> None:
    assert replay(backlog(200, 200, None, None, None, None, None, None, None, None, None), start=6) == []


def test_an_export_suspends_scale_down_but_not_scale_up() -> None:
    export = "export (task 7) holds the stack-owner lock"
    down = [(i * 5.0, Reading(backlog=0, here=0, export=export)) for i in range(20)]
    assert replay(down, start=6) == []
    up = [(i * 5.0, Reading(backlog=200, here=0, export=export)) for i in range(3)]
    assert replay(up) == [(5.0, 6)]


def test_a_pinned_queue_is_left_alone() -> None:
    pinned = [(i * 5.0, Reading(backlog=200, here=0, pinned=True)) for i in range(10)]
    assert replay(pinned, start=2) == []


def test_a_change_under_way_is_waited_for() -> None:
    _, decision = decide(AUTO, QueueState(), Reading(backlog=200, here=1, busy=True), 0.0)
    assert decision.count is None


def test_processes_on_other_hosts_count_towards_the_backlog_per_process() -> None:
    assert wanted_here(AUTO, 60, elsewhere=0) == 6
    assert wanted_here(AUTO, 60, elsewhere=4) == 2
    assert wanted_here(AUTO, 60, elsewhere=9) == 1  # this host keeps its min
    assert wanted_here(AUTO, 0, elsewhere=0) == 1


def test_a_count_outside_the_bounds_is_brought_back() -> None:
    _, low = decide(AUTO, QueueState(), Reading(backlog=0, here=0), 0.0)
    assert low.count == 1
    _, high = decide(AUTO, QueueState(), Reading(backlog=0, here=9), 0.0)
    assert high.count == 6
    _, held = decide(AUTO, QueueState(), Reading(backlog=0, here=9, export="an export"), 0.0)
    assert held.count is None


@settings(max_examples=300, deadline=None)
@given(
    rise=st.lists(st.integers(0, 400), min_size=1, max_size=20),
    fall=st.lists(st.integers(0, 400), min_size=1, max_size=40),
)
def test_once_the_burst_is_over_a_scale_down_is_never_followed_by_a_scale_up(
    rise: list[int], fall: list[int]
) -> None:
    # The backlog rises (any shape), then never grows again: no flapping, whatever the shapes.
    peak = max(rise)
    falling = sorted((min(v, peak) for v in fall), reverse=True)
    changes = replay(backlog(*rise, *falling))
    counts = [1] + [n for _, n in changes]
    over = 5.0 * len(rise)
    moves = [counts[i + 1] - counts[i] for i, (t, _) in enumerate(changes) if t >= over]
    first_down = next((i for i, move in enumerate(moves) if move < 0), None)
    if first_down is not None:
        assert all(move < 0 for move in moves[first_down:])
