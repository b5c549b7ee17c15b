"""Queue-depth autoscaling, the pure part: a reading of the broker and of every host in, a count out.

The signal is the backlog, ready plus unacknowledged messages (RabbitMQ's `messages`), per process: a queue
wants `ceil(backlog / target_backlog)` processes in all, and this host runs that many less the processes
RUNNING for the queue on other hosts whose heartbeat is fresh, within its own `min` and `max`. The backlog,
not the ack rate: PROTEA's batch queues ack once per long batch, so their momentary rate reads 0 between
acks (the reason `queues` judges starvation on the ack total), and a rate says nothing about a burst that
has not been started on yet.

Up is prompt and down is slow, as Kubernetes' HPA does it: a larger count is taken once it has been wanted
for `scale_up_delay` seconds; a smaller one only as the largest count wanted over the last
`scale_down_window` seconds (so a dip in a burst never scales down), and no change follows another within
`cooldown` seconds. A broker that does not answer freezes the count; an export holding the stack-owner lock
suspends scale-down (as it does for `scale`); a queue the operator pinned with `scale Q N` is left alone.

`decide` is pure: (settings, state, reading, now) -> (state, decision), replayable from a list of readings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from protea_supervisor.stackfile.stack import Autoscale


@dataclass(frozen=True)
class Reading:
    """One look at a queue: its backlog (None: the broker's API did not answer), the processes this host
    runs for it, those RUNNING on other fresh hosts, and what holds the count."""

    backlog: int | None
    here: int
    elsewhere: int = 0
    pinned: bool = False
    export: str = ""  # who holds the stack-owner lock for an export ("" when nobody does)
    busy: bool = False  # this host's last change of the queue is still running


@dataclass(frozen=True)
class QueueState:
    wanted_since: float | None = None  # when a larger count than `here` was first wanted, in a row
    recommendations: tuple[tuple[float, int], ...] = ()  # (when, count wanted here), within the window
    last_change: float | None = None


@dataclass(frozen=True)
class Decision:
    count: int | None  # the new count, or None to leave it
    why: str  # one line: the reading and the rule that gave the count
    wanted: int | None = None  # the count the backlog asks for here, within min/max


@dataclass(frozen=True)
class State:
    queues: Mapping[str, QueueState] = field(default_factory=dict)


def describe(settings: Autoscale) -> str:
    """The settings in one line, as the autoscaler's log and `reload --dry-run` show them."""
    up, down, cool = settings.scale_up_delay, settings.scale_down_window, settings.cooldown
    return (
        f"{settings.min}-{settings.max} processes at {settings.target_backlog} messages each; "
        f"up after {up} s, down over {down} s, {cool} s between changes"
    )


def wanted_here(settings: Autoscale, backlog: int, elsewhere: int) -> int:
    total = math.ceil(backlog / settings.target_backlog) if backlog > 0 else 0
    return max(settings.min, min(settings.max, total - elsewhere))


def decide(
    settings: Autoscale, state: QueueState, reading: Reading, now: float
) -> tuple[QueueState, Decision]:
    here = reading.here
    if reading.pinned:
        return replace(state, wanted_since=None), Decision(None, f"pinned at {here} by the operator")
    if reading.busy:
        return state, Decision(None, "the last change is still under way")
    if reading.backlog is None:
        frozen = Decision(None, f"the broker's API did not answer; {here} kept")
        return replace(state, wanted_since=None), frozen
    wanted = wanted_here(settings, reading.backlog, reading.elsewhere)
    window = settings.scale_down_window
    recommendations = (*((t, n) for t, n in state.recommendations if now - t < window), (now, wanted))
    state = replace(state, recommendations=recommendations)
    others = f", {reading.elsewhere} on other hosts" if reading.elsewhere else ""
    seen = f"backlog {reading.backlog}{others}"
    cooling = state.last_change is not None and now - state.last_change < settings.cooldown
    if here < settings.min:
        return _changed(state, now), Decision(settings.min, f"{here} is below min {settings.min}", wanted)
    if here > settings.max and not reading.export:
        return _changed(state, now), Decision(settings.max, f"{here} is above max {settings.max}", wanted)
    if wanted > here:
        since = state.wanted_since if state.wanted_since is not None else now
        state = replace(state, wanted_since=since)
        if now - since < settings.scale_up_delay:
            return state, Decision(None, f"{seen} wants {wanted}; waiting out scale_up_delay", wanted)
        if cooling:
            return state, Decision(None, f"{seen} wants {wanted}; in cooldown", wanted)
        per = settings.target_backlog
        return _changed(state, now), Decision(wanted, f"{seen} at {per} per process wants {wanted}", wanted)
    state = replace(state, wanted_since=None)
    highest = max(n for _, n in recommendations)
    if highest >= here:
        return state, Decision(None, f"{seen}: {here} kept (the window's highest want is {highest})", wanted)
    if reading.export:
        why = f"{seen} wants {highest}; scale-down suspended: {reading.export}"
        return state, Decision(None, why, wanted)
    if cooling:
        return state, Decision(None, f"{seen} wants {highest}; in cooldown", wanted)
    why = f"{seen} wants at most {highest} over the last {window:g} s"
    return _changed(state, now), Decision(highest, why, wanted)


def _changed(state: QueueState, now: float) -> QueueState:
    return replace(state, wanted_since=None, last_change=now)
