"""The deploy timer's decisions, replayed over event sequences with explicit times."""

from __future__ import annotations

import json
from collections.abc import Iterable

from protea_supervisor.listeners.deploy_timer import (
    COMM_TYPE,
    CheckRemote,
    Escalate,
    Log,
    Notify,
    Publish,
    StartTick,
    TimerConfig,
    TimerState,
    handle,
    resume,
    state_document,
    state_from_document,
)
from protea_supervisor.listeners.protocol import Event

CONFIG = TimerConfig(poll_interval=300, jitter=0, retry_ladder=(30, 120, 300), pause_after_escalation=1800,
                     escalation_command="page-someone", check_interval=0)  # fmt: skip


def tick(when: float) -> tuple[Event, float]:
    return Event("TICK_5", fields={"when": str(int(when))}), when


def tick_state(state: str, at: float, exitstatus: int | None = None) -> tuple[Event, float]:
    fields = {"processname": "deploy-tick", "groupname": "deploy-tick"}
    if exitstatus is not None:
        fields["exitstatus"] = str(exitstatus)
    return Event(f"PROCESS_STATE_{state}", fields=fields), at


def comm(message: dict[str, object], at: float) -> tuple[Event, float]:
    return Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=json.dumps(message)), at


def ran(code: int, at: float) -> list[tuple[Event, float]]:
    """A tick that supervisord starts at `at` and that exits with `code` a second later."""
    return [tick_state("STARTING", at), tick_state("RUNNING", at), tick_state("EXITED", at + 1, code)]


def replay(
    state: TimerState, events: Iterable[tuple[Event, float]], config: TimerConfig = CONFIG
) -> tuple[TimerState, list[object], list[str]]:
    actions: list[object] = []
    logs: list[str] = []
    for event, at in events:
        state, out = handle(config, state, event, at)
        actions += [a for a in out if not isinstance(a, (Log, Publish))]
        logs += [a.message for a in out if isinstance(a, Log)]
    return state, actions, logs


def fresh(now: float = 0.0) -> TimerState:
    state, _ = resume(CONFIG, None, "STOPPED", None, 0.0, now)
    return state


def test_polls_every_interval_and_never_while_a_tick_runs() -> None:
    state, actions, logs = replay(fresh(), [tick(295), tick(300), tick(305), tick(310)])
    assert actions == [StartTick("poll")] and "tick scheduled: poll" in logs
    state, actions, _ = replay(state, [*ran(0, 311), tick(315), tick(605), tick(610)])
    assert actions == [] and state.next_poll_at == 612
    state, actions, _ = replay(state, [tick(615)])
    assert actions == [StartTick("poll")]


def test_a_manual_trigger_starts_at_once_and_waits_for_a_running_tick() -> None:
    state, actions, logs = replay(
        fresh(), [comm({"kind": "trigger", "trigger": "manual", "reason": "hotfix"}, 10)]
    )
    assert actions == [StartTick("trigger:manual")] and any("hotfix" in line for line in logs)
    state, actions, _ = replay(state, [comm({"kind": "trigger", "trigger": "manual"}, 11), tick(15)])
    assert actions == [] and state.pending == "manual"
    state, actions, _ = replay(state, [*ran(10, 20), tick(25)])
    assert actions == [StartTick("trigger:manual")] and state.pending == ""


def test_failures_run_the_ladder_then_escalate_once_and_pause() -> None:
    state, _, _ = replay(fresh(), [comm({"kind": "trigger", "trigger": "manual"}, 0)])
    state, actions, logs = replay(state, ran(20, 0))
    assert actions == [] and "retry in 30s" in logs and "tick exit=20 deploy failed, rolled back" in logs
    state, actions, _ = replay(state, [tick(25), tick(35)])
    assert actions == [StartTick("retry")]
    state, _, logs = replay(state, [*ran(20, 35), tick(160)])
    assert "retry in 120s" in logs
    state, actions, logs = replay(state, [*ran(30, 160), tick(465), *ran(30, 465)])
    assert [a for a in actions if not isinstance(a, Notify)] == [StartTick("retry"), Escalate("fetch", 30)]
    assert [(a.event, a.summary[:11]) for a in actions if isinstance(a, Notify)] == [
        ("escalated", "tick exit=3"), ("paused", "no timed ti"),
    ]  # fmt: skip
    assert "escalated" in logs and any(line.startswith("paused until") for line in logs)
    # Paused: neither polls nor retries run; a manual trigger still does.
    state, actions, _ = replay(state, [tick(1000), tick(2000)])
    assert actions == []
    state, actions, _ = replay(state, [comm({"kind": "trigger", "trigger": "manual"}, 2001)])
    assert actions == [StartTick("trigger:manual")]
    # It succeeds: the pause is over, once.
    state, actions, logs = replay(state, ran(10, 2001))
    assert state.ladder_step == 0 and state.paused_until == 0.0 and "resumed" in logs
    assert [a.event for a in actions if isinstance(a, Notify)] == ["resumed"]


def test_a_pause_that_runs_out_resumes_the_timer_and_says_so_once() -> None:
    state = TimerState(next_poll_at=0.0, paused_until=500.0)
    state, actions, _ = replay(state, [tick(100)])
    assert actions == []
    state, actions, logs = replay(state, [tick(501)])
    assert [a.event for a in actions if isinstance(a, Notify)] == ["resumed"] and "resumed" in logs
    assert StartTick("poll") in actions and state.paused_until == 0.0
    state, actions, _ = replay(state, [*ran(0, 502), tick(510)])
    assert not [a for a in actions if isinstance(a, Notify)]


def test_a_success_on_the_ladder_returns_to_the_normal_cadence() -> None:
    state, _, _ = replay(fresh(), [comm({"kind": "trigger", "trigger": "manual"}, 0), *ran(20, 0), tick(35)])
    state, actions, _ = replay(state, [*ran(10, 35), tick(40), tick(200)])
    assert actions == [] and state.ladder_step == 0 and state.next_poll_at == 336


def test_prerequisite_failures_back_off_and_never_escalate() -> None:
    state, _, _ = replay(fresh(), [comm({"kind": "trigger", "trigger": "manual"}, 0)])
    now = 0.0
    waits = []
    escalations = []
    for _ in range(8):
        state, actions, _ = replay(state, ran(40, now))
        escalations += [a for a in actions if isinstance(a, Escalate)]
        waits.append(state.retry_at - (now + 1))
        now = state.retry_at
        state, actions, _ = replay(state, [tick(now)])
        assert actions == [StartTick("retry")]
    assert escalations == [] and waits == [30, 60, 120, 240, 300, 300, 300, 300]


def test_a_new_commit_triggers_but_the_first_sighting_only_records() -> None:
    config = TimerConfig(300, 0, (30,), 1800, "", check_interval=60)
    state, _ = resume(config, None, "STOPPED", None, 0.0, 0)
    state, actions, _ = replay(state, [tick(5)], config)
    assert actions == [CheckRemote()]
    state, actions, _ = replay(state, [comm({"kind": "remote", "sha": "a" * 40}, 6), tick(10)], config)
    assert actions == [] and state.seen_sha == "a" * 40
    state, actions, _ = replay(state, [tick(65), comm({"kind": "remote", "sha": "a" * 40}, 66)], config)
    assert actions == [CheckRemote()]
    state, actions, _ = replay(state, [tick(125), comm({"kind": "remote", "sha": "b" * 40}, 126)], config)
    assert actions == [CheckRemote(), StartTick("trigger:new-commit")]
    state, actions, _ = replay(
        state, [comm({"kind": "remote", "sha": "", "detail": "unreachable"}, 127)], config
    )
    assert actions == [] and state.seen_sha == "b" * 40


def test_tunnel_outages_trigger_at_most_once_per_spacing() -> None:
    outage = {"kind": "trigger", "trigger": "tunnel", "reason": "3 failed probes"}
    _, actions, _ = replay(fresh(), [comm(outage, 0), *ran(0, 0), comm(outage, 100), comm(outage, 301)])
    assert actions == [StartTick("trigger:tunnel"), StartTick("trigger:tunnel")]


def test_after_a_listener_restart_a_running_tick_is_waited_for_and_an_ended_one_counted_once() -> None:
    state, _, _ = replay(fresh(), [comm({"kind": "trigger", "trigger": "manual"}, 0), *ran(20, 0)])
    saved = state_from_document(json.loads(json.dumps(state_document(state))))
    # Killed while waiting out the ladder: nothing is started on the restart, the retry comes on time.
    again, actions = resume(CONFIG, saved, "EXITED", 20, 1.0, 10)
    assert (
        [a for a in actions if isinstance(a, StartTick)] == []
        and again.retry_at == 31
        and again.ladder_step == 1
    )
    # Killed while the retry tick ran: it is still running, so it is waited for (no duplicate start).
    running = replace_running(saved, started_at=31)
    again, actions = resume(CONFIG, running, "RUNNING", None, 1.0, 40)
    assert again.running and not [a for a in actions if isinstance(a, StartTick)]
    # ... or it ended while the listener was down: its exit is accounted for once.
    again, actions = resume(CONFIG, running, "EXITED", 20, 45.0, 50)
    assert again.ladder_step == 2 and again.retry_at == 170 and not again.running


def replace_running(state: TimerState, started_at: float) -> TimerState:
    from dataclasses import replace

    return replace(state, running=True, started_at=started_at, retry_at=0.0)
