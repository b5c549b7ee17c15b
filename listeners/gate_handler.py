"""The readiness gate's decisions: infra ports -> migrate exits 0 -> api ready -> web ready -> tunnel RUNNING
-> the workers RUNNING. The public chain comes first: the tunnel waits for what the public needs (API and
web ready), not for the workers' startsecs, and the workers start (all at once) only after the tunnel is up,
so their start-up (on a small host, eleven Python processes importing at once) does not slow the chain's
steps; their start is reported, and fails the run if one cannot start. Pure: `handle` and `refresh` take
(plan, state, input, now) and return (state, actions); `gate.py` is the edge (executor, state file, main).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from protea_supervisor.stackfile.host import REFUSED_EXIT
from protea_supervisor.stackfile.stack import RESERVED
from protea_supervisor.supervisord.gate_contract import CHAIN, COMM_TYPE, STATE_FILE, STEPS
from protea_supervisor.supervisord.probes import InfraTarget

from . import clock
from .actions import Log
from .protocol import Event

__all__ = ["CHAIN", "COMM_TYPE", "STATE_FILE", "STEPS"]

UP_STATES = ("STARTING", "RUNNING", "BACKOFF")


# --- records --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatePlan:
    """What the gate waits for, from the stack description (and the env, for the infra ports)."""

    infra: tuple[InfraTarget, ...]
    infra_timeout: float
    migrate: str | None
    api: str | None
    api_url: str
    api_timeout: float
    workers: tuple[str, ...]
    web: str | None
    web_url: str
    web_timeout: float
    tunnel: str | None
    # How long the workers and tunnel steps may wait for their processes to reach RUNNING.
    start_timeout: float = 60.0

    def groups(self, step: str) -> tuple[str, ...]:
        by_step = {
            "migrate": (self.migrate,),
            "api": (self.api,),
            "workers": self.workers,
            "web": (self.web,),
            "tunnel": (self.tunnel,),
        }
        return tuple(g for g in by_step.get(step, ()) if g)

    def app_groups(self) -> set[str]:
        return {g for step in STEPS for g in self.groups(step)}

    def with_live_workers(self, procs: Mapping[str, Proc]) -> GatePlan:
        """The workers as supervisord runs them now: every group that is no role, listener or one-shot. A
        run plans from them, so a queue `scale` added while this listener ran is started and waited for
        without the listener being restarted."""
        live = sorted({p.group for p in procs.values() if p.group not in RESERVED})
        return replace(self, workers=tuple(live))


@dataclass(frozen=True)
class Proc:
    group: str
    name: str
    state: str
    exited_ok: bool | None = None
    stopped_at: float = 0.0
    # Why a check of the exec wrapper refused its last start (revision guard, singleton lock): final, as
    # supervisord takes its exit 78; the edge reads it from the refusal records.
    refused: str = ""

    @property
    def key(self) -> str:
        return f"{self.group}:{self.name}"


@dataclass(frozen=True)
class GateState:
    phase: str = "idle"  # idle | running | done | failed | cancelled (by `down`)
    generation: int = 0
    since: float = 0.0
    step: str = ""
    reason: str = ""
    failed_process: str = ""
    processes: Mapping[str, Proc] = field(default_factory=dict)
    probes: Mapping[str, bool] = field(default_factory=dict)
    probe_detail: Mapping[str, str] = field(default_factory=dict)
    pending: frozenset[str] = frozenset()
    requested: frozenset[str] = frozenset()
    steps: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    requests: tuple[str, ...] = ()
    finished_at: float = 0.0
    # The last event's wall time, to see the clock step back (clock.py); bookkeeping, not persisted.
    clock: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Start:
    namespec: str


@dataclass(frozen=True)
class Probe:
    kind: str  # infra | api | web
    generation: int


@dataclass(frozen=True)
class Publish:
    state: GateState


Action = Start | Probe | Publish | Log


# --- the pure handler -----------------------------------------------------------------------------------

# A program that exits 78 (EX_CONFIG) after its startsecs refuses its own start: final for the gate as for
# the reviver (workers.restart_delay), though no check of the wrapper left a record of why.
OWN_REFUSAL = "it exited 78 (its own refusal to start)"


def snapshot(infos: Iterable[Mapping[str, Any]], refused: Mapping[str, str] | None = None) -> dict[str, Proc]:
    """Processes from getAllProcessInfo (used at start, so a restarted listener loses nothing); `refused`:
    `group:process` -> why its last start was refused."""
    procs = {}
    for info in infos:
        exited_ok = info["exitstatus"] == 0 if info["statename"] == "EXITED" else None
        key = f"{info['group']}:{info['name']}"
        own = OWN_REFUSAL if info["statename"] == "EXITED" and info["exitstatus"] == REFUSED_EXIT else ""
        proc = Proc(
            str(info["group"]),
            str(info["name"]),
            str(info["statename"]),
            exited_ok,
            float(info["stop"]),
            (refused or {}).get(key, "") or own,
        )
        procs[proc.key] = proc
    return procs


def begin(state: GateState, now: float, request: str = "", retry: bool = False) -> GateState:
    """A new gate run. A retry keeps `since`, so a migration that already succeeded is not run again."""
    requests = (*state.requests, request)[-20:] if request else state.requests
    return replace(
        state,
        phase="running",
        generation=state.generation + 1,
        since=state.since if retry and state.since else now,
        step="",
        reason="",
        failed_process="",
        probes={},
        probe_detail={},
        pending=frozenset(),
        requested=frozenset(),
        steps={},
        requests=requests,
        finished_at=0.0,
    )


def resume(
    plan: GatePlan, saved: GateState | None, procs: Mapping[str, Proc], now: float, same_supervisord: bool
) -> tuple[GateState, list[Action]]:
    """The listener (re)started. Same supervisord: carry on from the saved state; probes in flight were lost,
    so they are asked again. A new supervisord (boot) with no app program up: the gate runs."""
    state = replace(saved or GateState(), processes=dict(procs), pending=frozenset(), requested=frozenset())
    if same_supervisord and saved is not None:
        if state.phase == "running":
            return advance(plan, replace(state, probes={k: v for k, v in state.probes.items() if v}), now)
        return state, []
    anything_up = any(
        p.group in plan.app_groups() and p.state in (*UP_STATES, "STOPPING") for p in procs.values()
    )
    if anything_up:
        return replace(state, phase="idle"), [
            Log("gate: listener started with the stack already up; waiting")
        ]
    return advance(plan, begin(state, now), now, [Log("gate: supervisord started; running the gate")])


def refresh(
    plan: GatePlan, state: GateState, procs: Mapping[str, Proc], now: float
) -> tuple[GateState, list[Action]]:
    """supervisord's live process list replaces what the events built up: processes a scale-down dropped are
    no longer waited for or started, and new ones are. While running, the step is checked again (its
    deadline included)."""
    state, stepped = unstepped(state, now)
    state = with_live(state, procs)
    state, actions = advance(plan, state, now) if state.phase == "running" else (state, [])
    return state, [*stepped, *actions]


def unstepped(state: GateState, now: float) -> tuple[GateState, list[Action]]:
    """The wall clock stepped back: the run's moments move with it, so a step's deadline still measures the
    time that passed (see clock.py)."""
    state, by = clock.unstepped(state, now, ("since", "finished_at"))
    if not by:
        return state, []
    state = replace(
        state,
        steps={name: (clock.moved(a, by), clock.moved(b, by)) for name, (a, b) in state.steps.items()},
        processes={
            key: replace(proc, stopped_at=clock.moved(proc.stopped_at, by))
            for key, proc in state.processes.items()
        },
    )
    return state, [Log(clock.stepped_line("gate", by))]


def with_live(state: GateState, procs: Mapping[str, Proc]) -> GateState:
    """The live process list, where a process whose state the events already know keeps its record: the
    events' times are exact, while supervisord reports a stop time in whole seconds."""
    known = state.processes
    merged = {
        key: known[key] if key in known and known[key].state == live.state else live
        for key, live in procs.items()
    }
    return replace(state, processes=merged)


def handle(plan: GatePlan, state: GateState, event: Event, now: float) -> tuple[GateState, list[Action]]:
    state, stepped = unstepped(state, now)
    state, actions = _handle(plan, state, event, now)
    return state, [*stepped, *actions]


def _handle(plan: GatePlan, state: GateState, event: Event, now: float) -> tuple[GateState, list[Action]]:
    if event.name.startswith("PROCESS_STATE_"):
        state = _with_process_event(state, event, now)
        return advance(plan, state, now) if state.phase == "running" else (state, [])
    if event.name == "REMOTE_COMMUNICATION" and event.fields.get("type") == COMM_TYPE:
        try:
            message = json.loads(event.data)
        except ValueError:
            return state, [Log("gate: ignored a malformed message")]
        return _message(plan, state, message, now)
    return state, []


def _with_process_event(state: GateState, event: Event, now: float) -> GateState:
    """Only processes in the live list count: one a scale-down is draining (dropped from the list) must not
    come back through its STOPPED event, and a new one joins at the next refresh."""
    key = event.process
    old = state.processes.get(key)
    if old is None:
        return state
    exited_ok = event.fields.get("expected") == "1" if event.state == "EXITED" else None
    stopped_at = now if event.state in ("EXITED", "STOPPED", "FATAL") else (old.stopped_at if old else 0.0)
    proc = Proc(
        event.fields.get("groupname", ""),
        event.fields.get("processname", ""),
        event.state,
        exited_ok,
        stopped_at,
        event.fields.get("refused", "") if event.state in ("EXITED", "BACKOFF", "FATAL") else "",
    )
    return replace(state, processes={**state.processes, key: proc})


def _message(
    plan: GatePlan, state: GateState, message: Mapping[str, Any], now: float
) -> tuple[GateState, list[Action]]:
    command = message.get("command")
    if command == "cancel":
        if state.phase != "running":
            return state, []
        state = replace(state, phase="cancelled", reason=str(message.get("reason", "")), finished_at=now)
        return state, [Log(f"gate: cancelled at {state.step}: {state.reason}"), Publish(state)]
    if command in ("start", "retry"):
        request = str(message.get("request", ""))
        if request and request in state.requests:
            return state, []  # a request sent again (its sender had not seen it taken): already taken
        if state.phase == "running":
            requests = (*state.requests, request)[-20:] if request else state.requests
            state = replace(state, requests=requests)
            # Published at once: the requester follows the state file, and a listener killed before its
            # next publish must not lose the request.
            return state, [Log(f"gate: already running (step {state.step})"), Publish(state)]
        state = begin(state, now, request, retry=command == "retry")
        return advance(plan, state, now, [Log(f"gate: {command} (run {state.generation})")])
    if message.get("kind") == "probe":
        kind = str(message.get("probe"))
        if message.get("generation") != state.generation or state.phase != "running":
            return state, []
        state = replace(
            state,
            probes={**state.probes, kind: bool(message.get("ok"))},
            probe_detail={**state.probe_detail, kind: str(message.get("detail", ""))},
            pending=state.pending - {kind},
        )
        return advance(plan, state, now)
    return state, [Log("gate: ignored an unknown message")]


def advance(
    plan: GatePlan, state: GateState, now: float, actions: list[Action] | None = None
) -> tuple[GateState, list[Action]]:
    """Walk the steps in order and act on the first one not satisfied. Publishes when anything changed."""
    actions = list(actions or [])
    before = state
    for step in STEPS:
        if not (plan.infra if step == "infra" else plan.groups(step)):
            continue  # nothing to wait for at this step in this stack
        state = _enter(state, step, now)
        outcome = _check(plan, state, step)
        if outcome is None:
            continue
        if not isinstance(outcome, Failure):
            outcome = _overdue(plan, state, step, now) or outcome
        if isinstance(outcome, Failure):
            state = replace(
                state, phase="failed", reason=outcome.reason, failed_process=outcome.process, finished_at=now
            )
            actions.append(Log(f"gate: FAILED at {step}: {outcome.reason}"))
        else:
            state, more = _act(state, outcome)
            actions += more
        break
    else:
        state = replace(state, phase="done", step="done", finished_at=now)
        actions.append(Log(f"gate: done (run {state.generation})"))
    state = _finish_steps(state, now)
    if _public(state) != _public(before) or any(not isinstance(a, Log) for a in actions):
        actions.append(Publish(state))
    return state, actions


@dataclass(frozen=True)
class Failure:
    reason: str
    process: str = ""


Outcome = Failure | list[Action] | None  # None: satisfied; []: waiting; [actions]: do these, then wait


def _check(plan: GatePlan, state: GateState, step: str) -> Outcome:
    if step == "infra":
        return _probe_step(state, "infra", bool(plan.infra), _infra_reason(plan, state))
    groups = plan.groups(step)
    if not groups:
        return None
    procs = [p for p in state.processes.values() if p.group in groups]
    missing = set(groups) - {p.group for p in procs}
    if missing:
        return Failure(f"supervisord has no program {', '.join(sorted(missing))}; render and reload")
    if step == "migrate":
        return _oneshot(state, procs)
    outcome = _services(state, procs)
    if outcome is not None:
        return outcome
    if step == "api":
        return _probe_step(
            state,
            "api",
            bool(plan.api_url),
            f"api did not answer {plan.api_url} with 2xx within {plan.api_timeout:g} s",
        )
    if step == "web":
        return _probe_step(
            state,
            "web",
            bool(plan.web_url),
            f"web did not answer {plan.web_url} within {plan.web_timeout:g} s",
        )
    return None


def _overdue(plan: GatePlan, state: GateState, step: str, now: float) -> Failure | None:
    """A step that starts processes and waits for RUNNING cannot wait for ever: after `start_timeout` it
    fails, naming what never got there."""
    if step not in ("workers", "tunnel") or step not in state.steps:
        return None
    if now - state.steps[step][0] < plan.start_timeout:
        return None
    groups = plan.groups(step)
    slow = sorted(
        f"{p.name} {p.state}" for p in state.processes.values() if p.group in groups and p.state != "RUNNING"
    )
    shown = ", ".join(slow[:6]) + (f" and {len(slow) - 6} more" if len(slow) > 6 else "")
    return Failure(f"{shown} did not reach RUNNING within {plan.start_timeout:g} s")


def _infra_reason(plan: GatePlan, state: GateState) -> str:
    closed = state.probe_detail.get("infra", "")
    return f"infrastructure port(s) {closed} not accepting connections within {plan.infra_timeout:g} s"


def _probe_step(state: GateState, kind: str, wanted: bool, reason: str) -> Outcome:
    if not wanted or state.probes.get(kind) is True:
        return None
    if state.probes.get(kind) is False:
        return Failure(reason)
    if kind in state.pending:
        return []
    return [Probe(kind, state.generation)]


def _oneshot(state: GateState, procs: Sequence[Proc]) -> Outcome:
    proc = procs[0]
    # Exited during this run. supervisord reports stop times in whole seconds (getAllProcessInfo, read at a
    # listener start or a refresh), so the run's start is compared in whole seconds too.
    if proc.state == "EXITED" and proc.stopped_at >= math.floor(state.since):
        return None if proc.exited_ok else Failure(f"{proc.name} exited with a non-zero status", proc.key)
    if proc.state == "FATAL" and proc.key in state.requested:
        return Failure(f"{proc.name} could not be started (FATAL)", proc.key)
    if proc.state in ("STARTING", "RUNNING", "BACKOFF"):
        return []
    return [] if proc.key in state.requested else [Start(proc.key)]


def _services(state: GateState, procs: Sequence[Proc]) -> Outcome:
    """None when every process runs; a Failure when one is FATAL or exited; else starts to make, or []."""
    starts: list[Action] = []
    waiting = False
    for proc in procs:
        if proc.state == "RUNNING":
            continue
        if proc.refused and proc.state in ("EXITED", "FATAL"):
            continue  # a check refused it (exit 78): final, as supervisord takes it; `status` says why
        if proc.state == "FATAL" and proc.key in state.requested:
            return Failure(f"{proc.name} could not be started (FATAL)", proc.key)
        if proc.state == "EXITED" and proc.key in state.requested:
            return Failure(f"{proc.name} exited during start-up", proc.key)
        waiting = True
        if proc.state not in (*UP_STATES, "STOPPING") and proc.key not in state.requested:
            starts.append(Start(proc.key))
    if not waiting:
        return None
    return starts


def _act(state: GateState, actions: list[Action]) -> tuple[GateState, list[Action]]:
    requested = state.requested | {a.namespec for a in actions if isinstance(a, Start)}
    pending = state.pending | {a.kind for a in actions if isinstance(a, Probe)}
    return replace(state, requested=requested, pending=pending), actions


def _enter(state: GateState, step: str, now: float) -> GateState:
    if state.step == step or step in state.steps:
        return replace(state, step=step)
    return replace(state, step=step, steps={**state.steps, step: (now, 0.0)})


def _finish_steps(state: GateState, now: float) -> GateState:
    """A step before the current one (or every step, when done) is finished."""
    current = STEPS.index(state.step) if state.step in STEPS else len(STEPS)
    steps = {}
    for step, (started, finished) in state.steps.items():
        if STEPS.index(step) < current and not finished:
            finished = now
        steps[step] = (started, finished)
    return replace(state, steps=steps)


def _public(state: GateState) -> tuple[Any, ...]:
    return (
        state.phase,
        state.generation,
        state.step,
        state.reason,
        tuple(sorted(state.steps.items())),
        state.requests,
    )


# --- state file -----------------------------------------------------------------------------------------


def state_document(state: GateState, supervisord_pid: int, log_tail: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "phase": state.phase,
        "step": state.step,
        "generation": state.generation,
        "since": state.since,
        "finished_at": state.finished_at,
        "reason": state.reason,
        "failed_process": state.failed_process,
        "log_tail": list(log_tail),
        "steps": [{"step": s, "started_at": a, "finished_at": b} for s, (a, b) in state.steps.items()],
        "probes": dict(state.probes),
        "requests": list(state.requests),
        "supervisord_pid": supervisord_pid,
    }


def state_from_document(doc: Mapping[str, Any]) -> GateState:
    return GateState(
        phase=str(doc.get("phase", "idle")),
        generation=int(doc.get("generation", 0)),
        since=float(doc.get("since", 0.0)),
        step=str(doc.get("step", "")),
        reason=str(doc.get("reason", "")),
        failed_process=str(doc.get("failed_process", "")),
        probes={str(k): bool(v) for k, v in dict(doc.get("probes", {})).items()},
        steps={
            str(s["step"]): (float(s["started_at"]), float(s["finished_at"])) for s in doc.get("steps", [])
        },
        requests=tuple(str(r) for r in doc.get("requests", [])),
        finished_at=float(doc.get("finished_at", 0.0)),
    )
