"""A stepped wall clock, replayed through the deploy timer's and the tunnel watchdog's handlers: a step back
by an hour stalls neither the timer's polls nor the watchdog's probes (their deadlines move with the clock),
and a step forward is time that passed, as after a suspended machine resumes: what fell due runs once, with
no burst."""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from protea_supervisor.listeners.clock import step
from protea_supervisor.listeners.deploy_timer import StartTick
from protea_supervisor.listeners.protocol import Event
from protea_supervisor.listeners.tunnel_watch import Probe, handle
from test_deploy_timer_handler import fresh, ran, replay, tick
from test_tunnel_watch_handler import CONFIG as WATCH
from test_tunnel_watch_handler import result, running_since

HOUR = 3600.0
# Wall times as they are (2027), so that an hour back is still a time, not a negative number.
BASE = 1_800_000_000


def test_a_step_is_a_jump_back() -> None:
    assert step(0.0, 100.0) == 0.0  # nothing before
    assert step(100.0, 105.0) == 0.0 and step(100.0, 99.2) == 0.0 and step(100.0, 100.0 + HOUR) == 0.0
    assert step(100.0, 100.0 - HOUR) == -HOUR


def polls(events: list[tuple[Event, float]]) -> list[float]:
    """When the timer started a poll, replaying `events` from a fresh state (each poll's tick exits 0)."""
    state, at = fresh(BASE), []
    for event, when in events:
        state, actions, _ = replay(state, [(event, when)])
        if StartTick("poll") in actions:
            at.append(when)
            state, _, _ = replay(state, ran(0, when + 1))
    return at


def test_the_deploy_timer_polls_every_interval_through_a_step_back_or_forward() -> None:
    assert polls([tick(BASE + t) for t in range(5, 1500, 5)]) == [
        BASE + 300,
        BASE + 605,
        BASE + 910,
        BASE + 1215,
    ]
    # An hour back at t=400 (the timer had polled at 300, its next poll due at 602): the polls go on every
    # 305 s (300 s, and the tick's own second and the 5 s of TICK_5) in the new frame.
    back = [
        when - BASE for when in polls([tick(BASE + t - (HOUR if t >= 400 else 0)) for t in range(5, 1500, 5)])
    ]
    assert back == [300, 610 - HOUR, 915 - HOUR, 1220 - HOUR]
    # An hour forward at t=400: the poll that fell due runs once, then the cadence goes on from it.
    forward = [
        when - BASE for when in polls([tick(BASE + t + (HOUR if t >= 400 else 0)) for t in range(5, 1500, 5)])
    ]
    assert forward == [300, 400 + HOUR, 705 + HOUR, 1010 + HOUR, 1315 + HOUR]


def watched(step_at: float, by: float, until: float) -> list[float]:
    """The times (real, not the wall clock's) at which probes were sent to a healthy tunnel that answers
    each 0.3 s later, with TICK_5 every 5 s, when the wall clock steps by `by` at `step_at`."""

    def wall(t: float) -> float:
        return BASE + t + (by if t >= step_at else 0.0)

    state = running_since(BASE)  # probe 1 sent at 0, not answered yet
    pending: list[tuple[float, int, int]] = [(float(t), 0, 0) for t in range(5, int(until), 5)]
    pending.append((0.3, 1, 1))
    sent = [0.0]
    while pending:
        pending.sort()
        t, kind, probe_id = pending.pop(0)
        event = (
            Event("TICK_5", fields={"when": str(int(wall(t)))}) if kind == 0 else result(probe_id, True, 0)[0]
        )
        state, actions = handle(WATCH, state, event, wall(t))
        for probe in (a for a in actions if isinstance(a, Probe)):
            sent.append(t + probe.delay)
            if t + probe.delay + 0.3 < until:
                pending.append((t + probe.delay + 0.3, 1, probe.probe_id))
    return sent


def test_the_watchdog_keeps_probing_every_interval_through_a_step_back_or_forward() -> None:
    for by in (-HOUR, HOUR):
        sent = watched(step_at=102.5, by=by, until=600)
        gaps = [round(b - a, 1) for a, b in itertools.pairwise(sent)]
        assert max(gaps) <= 15, (by, gaps)  # no stall
        # No burst either: one probe per 10 s over 600 s, and on a jump forward the one that fell due.
        assert 58 <= len(sent) <= 62 + (by > 0), (by, len(sent))
