"""A wall clock that steps back (NTP correcting a drift, an operator's `date -s`, a VM restored) must not
stall a listener's schedule. Its handler gets the wall time with every event (a TICK_5's `when`, the edge's
clock for the others), at least every 5 s: a time that goes back is a step, and the handler moves its
deadlines by it, so that each interval still measures the time that passed. Left alone, an hour back
stopped the deploy timer's polls and the tunnel watchdog's probes for an hour, and gave a gate step an hour
more before it failed. A jump forward is time that passed, as when a suspended machine resumes: what fell
due runs once. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    State = TypeVar("State", bound=DataclassInstance)

# Event times 2 s out of order are no step: a TICK_5's `when` is whole seconds, the edge's clock is not.
BACKWARD = -2.0


def step(last: float, now: float) -> float:
    """How far the wall clock stepped back between two consecutive events (0.0 when it did not, or when
    there is no event before this one)."""
    if not last:
        return 0.0
    delta = now - last
    return delta if delta < BACKWARD else 0.0


def moved(when: float, by: float) -> float:
    """A deadline or a moment moved with the clock; 0.0 (unset) stays unset."""
    return when + by if when else when


def unstepped(state: State, now: float, moments: Sequence[str]) -> tuple[State, float]:
    """A handler's state (a dataclass with a `clock` field) at an event of wall time `now`: when the clock
    stepped back since the last event, its `moments` (wall times, or tuples of them) move with it. Returns
    the state and the step (0.0 when there was none)."""
    by = step(getattr(state, "clock"), now)  # noqa: B009 (any handler's state)
    changes: dict[str, Any] = {"clock": now}
    if by:
        for name in moments:
            value = getattr(state, name)
            changes[name] = (
                tuple(moved(v, by) for v in value) if isinstance(value, tuple) else moved(value, by)
            )
    return replace(state, **changes), by


def stepped_line(who: str, by: float) -> str:
    return f"{who}: the wall clock stepped back {-by:.0f} s; its deadlines moved with it"
