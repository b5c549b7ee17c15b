"""The tunnel watchdog's decisions, replayed over event sequences with explicit times."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

from protea_supervisor.listeners.protocol import Event
from protea_supervisor.listeners.tunnel_watch import (
    COMM_TYPE,
    Log,
    Probe,
    Publish,
    ReportOutage,
    StartTunnel,
    StopTunnel,
    WatchConfig,
    WatchState,
    agent_verdict,
    begin,
    handle,
    lost_after,
    public_verdict,
    resume,
    state_document,
    state_from_document,
)

from protea_supervisor.stackfile.stack import TunnelWatch

RULES = TunnelWatch(enabled=True, probe_interval=10, probe_timeout=5, failures=3, confirm_interval=2, grace=20,
                    backoff_initial=15, backoff_max=300, max_restarts_per_hour=6, down_statuses=(402,))  # fmt: skip
CONFIG = WatchConfig("https://protea.ngrok.app", "http://127.0.0.1:4040/api/tunnels", RULES)


def tick(when: float) -> tuple[Event, float]:
    return Event("TICK_5", fields={"when": str(int(when))}), when


def tunnel(state: str, at: float) -> tuple[Event, float]:
    return Event(f"PROCESS_STATE_{state}", fields={"processname": "tunnel", "groupname": "tunnel"}), at


def result(probe_id: int, ok: bool, at: float, detail: str = "public URL: Timeout") -> tuple[Event, float]:
    data = json.dumps({"kind": "probe", "probe_id": probe_id, "ok": ok, "detail": detail})
    return Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=data), at


def slow(probe_id: int, at: float) -> tuple[Event, float]:
    data = json.dumps({"kind": "slow", "probe_id": probe_id})
    return Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=data), at


def reset(at: float) -> tuple[Event, float]:
    return Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data='{"command": "reset"}'), at


def replay(state: WatchState, events: Iterable[tuple[Event, float]]) -> tuple[WatchState, list[list[object]]]:
    out = []
    for event, at in events:
        state, actions = handle(CONFIG, state, event, at)
        out.append([a for a in actions if not isinstance(a, (Log, Publish, ReportOutage))])
    return state, out


def running_since(at: float) -> WatchState:
    """A tunnel that went RUNNING at `at`: the clock started with probe 1, sent then and not answered yet."""
    state, actions = replay(WatchState(), [tunnel("STARTING", at - 1), tunnel("RUNNING", at)])
    assert actions == [[], [Probe(1, 0, 2)]]
    return state


def healthy_until(state: WatchState, until: float) -> WatchState:
    """Answer every probe (0.3 s after it was sent) while the next one is due before `until`; the one due at
    or after `until` is left in flight."""
    while state.probe_asked_at < until:
        answer_at = state.probe_asked_at + 0.3
        state, actions = replay(state, [result(state.probe_id, True, answer_at)])
        assert actions == [[Probe(state.probe_id, state.probe_asked_at - answer_at, 2)]]
    return state


def starts_and_stops(actions: list[list[object]]) -> list[list[object]]:
    return [[a for a in step if isinstance(a, (StartTunnel, StopTunnel))] for step in actions]


def test_not_started_by_the_gate_yet_means_nothing_is_probed_or_restarted() -> None:
    state, actions = replay(
        WatchState(tunnel="STOPPED"), [tick(100), tick(105), tunnel("EXITED", 106), tick(110)]
    )
    assert actions == [[], [], [], []] and not state.armed


def simulate(
    state: WatchState, rules: TunnelWatch, until: float
) -> tuple[WatchState, list[float], list[object]]:
    """Run the handler against TICK_5 and a tunnel that answers every probe 0.3 s after it is sent; returns
    when each probe was sent and every action."""
    config = WatchConfig(CONFIG.public_url, CONFIG.agent_url, rules)
    pending: list[tuple[float, int, Event]] = [(float(t), 0, tick(t)[0]) for t in range(5, int(until), 5)]
    sent = [state.probe_asked_at] if state.in_flight else []
    pending += [
        (state.probe_asked_at + 0.3, 1, result(i, True, state.probe_asked_at + 0.3)[0])
        for i in state.in_flight
    ]
    seen: list[object] = []
    while pending:
        pending.sort(key=lambda item: (item[0], item[1]))
        at, _, event = pending.pop(0)
        state, actions = handle(config, state, event, at)
        for action in actions:
            seen.append(action)
            if isinstance(action, Probe):
                sent.append(at + action.delay)
                answer = at + action.delay + 0.3
                if answer < until:
                    pending.append((answer, 1, result(action.probe_id, True, answer)[0]))
    return state, [t for t in sent if t < until], seen


def test_a_healthy_tunnel_is_probed_on_its_own_clock_every_interval_and_never_restarted() -> None:
    state = running_since(0)
    state, sent, seen = simulate(state, RULES, 3600)
    assert not [a for a in seen if isinstance(a, (StartTunnel, StopTunnel))]
    # One probe per 10 s interval over the hour, each exactly one interval after the one before: the
    # ticks every 5 s add none.
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(sent)}
    assert gaps == {10.0} and len(sent) == 360
    assert state.restarts == () and state.failures == 0


def test_a_one_second_interval_is_kept_although_ticks_come_every_five_seconds() -> None:
    rules = TunnelWatch(**{**RULES.__dict__, "probe_interval": 1})
    state, _ = replay(WatchState(), [tunnel("RUNNING", 0)])
    state, sent, _ = simulate(state, rules, 60)
    assert len(sent) == 60 and max(b - a for a, b in itertools.pairwise(sent)) < 1.0 + 1e-9


def test_three_consecutive_failures_after_grace_restart_the_tunnel_with_confirmations_off_the_tick() -> None:
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    state, actions = replay(
        state, [result(n, False, 30.5), result(n + 1, False, 32.6), result(n + 2, False, 34.7)]
    )
    assert actions == [[Probe(n + 1, 2, 2)], [Probe(n + 2, 2, 2)], [StopTunnel()]]
    assert state.restarting and state.restarts == (34.7,)
    state, actions = replay(
        state, [tunnel("STOPPING", 35), tunnel("STOPPED", 35.5), tunnel("STARTING", 35.6)]
    )
    assert actions == [[], [StartTunnel()], []]
    # The new process is probed at once (its answers count once the grace has passed); ticks add nothing.
    state, actions = replay(state, [tunnel("RUNNING", 36.6), tick(40)])
    assert actions == [[Probe(n + 3, 0, 2)], []] and state.failures == 0


def test_a_hung_tunnel_is_confirmed_while_the_first_probe_still_waits_for_its_timeout() -> None:
    # Each probe hangs for its 5 s timeout; confirmations are asked 2 s apart, not 5 + 2 s apart.
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    state, actions = replay(
        state,
        [slow(n, 32), slow(n + 1, 34), slow(n + 2, 36), result(n, False, 35), result(n + 1, False, 37),
         result(n + 2, False, 39)],
    )  # fmt: skip
    assert actions == [[Probe(n + 1, 0, 2)], [Probe(n + 2, 0, 2)], [], [], [], [StopTunnel()]]
    assert state.restarts == (39,) and state.in_flight == ()


def test_a_late_answer_from_before_a_restart_is_ignored() -> None:
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    state, _ = replay(state, [slow(n, 32), slow(n + 1, 34), result(n, False, 35), result(n + 1, False, 37)])
    state, _ = replay(state, [result(n + 2, False, 39)])
    assert state.restarting
    before = state
    state, actions = replay(state, [result(n + 2, True, 40), slow(n + 2, 40)])
    assert state == before and actions == [[], []]


def test_a_slow_probe_that_then_answers_clears_the_count_and_the_clock_goes_on() -> None:
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    state, actions = replay(state, [slow(n, 32), result(n, True, 32.5), result(n + 1, True, 32.6)])
    # The next regular probe is one interval after the last one was sent (at 32).
    assert actions == [[Probe(n + 1, 0, 2)], [], [Probe(n + 2, 42 - 32.6, 2)]]
    assert state.failures == 0 and state.in_flight == (n + 2,)


def test_failures_inside_the_grace_period_do_not_count() -> None:
    state = running_since(100)
    state, actions = replay(state, [result(1, False, 101), tick(105), result(2, False, 106), tick(110)])
    assert actions[0] == [Probe(2, 2, 2)]  # asked again `confirm_interval` later, not counted
    assert state.failures == 0 and not [a for step in actions for a in step if isinstance(a, StopTunnel)]


def test_one_success_clears_the_count() -> None:
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    state, _ = replay(state, [result(n, False, 31), result(n + 1, True, 34)])
    assert state.failures == 0 and state.next_probe_at == 43  # one interval after the probe was sent (33)


def test_a_probe_that_never_reports_is_given_up_on_a_tick() -> None:
    state = healthy_until(running_since(0), 30)
    n = state.probe_id
    limit = 30 + lost_after(RULES)
    state, actions = replay(state, [tick(limit), tick(limit + 1)])
    assert actions == [[], [Probe(n + 1, 0, 2)]] and state.in_flight == (n + 1,)
    state, actions = replay(state, [result(n, False, limit + 2)])
    assert actions == [[]] and state.failures == 0  # its late answer no longer counts


def test_a_listener_that_starts_beside_a_running_tunnel_probes_at_once() -> None:
    resumed = resume(CONFIG, None, "RUNNING", 4242, 200)
    _, actions = begin(CONFIG, resumed, 200)
    assert actions == [Probe(1, 0, 2)]
    assert begin(CONFIG, resume(CONFIG, None, "STOPPED", 0, 200), 200)[1] == []


def test_exited_or_fatal_tunnel_is_started_again_with_capped_exponential_backoff() -> None:
    state = running_since(0)
    state, actions = replay(state, [tunnel("EXITED", 100)])
    assert actions == [[StartTunnel()]] and state.next_restart_at == 115
    state, actions = replay(state, [tunnel("STARTING", 100.5), tunnel("BACKOFF", 101), tunnel("FATAL", 103)])
    assert actions == [[], [], []]  # FATAL inside the backoff window waits for a tick past it
    state, actions = replay(state, [tick(110), tick(115)])
    assert actions == [[], [StartTunnel()]] and state.backoff == 30 and state.next_restart_at == 145
    backoffs = []
    for start in range(200, 5000, 400):
        state, _ = replay(state, [tunnel("FATAL", start), tick(start + 399)])
        backoffs.append(state.backoff)
    assert max(backoffs) == 300  # doubling, capped at backoff_max


def test_restart_budget_per_hour_then_loud_log_then_reset() -> None:
    state = running_since(0)
    for n in range(6):
        state, actions = replay(
            state, [tunnel("EXITED", 1000 + n * 400), tunnel("RUNNING", 1000 + n * 400 + 1)]
        )
        assert starts_and_stops(actions) == [[StartTunnel()], []]
    assert len(state.restarts) == 6
    state, actions = handle(CONFIG, state, tunnel("EXITED", 3500)[0], 3500)
    assert not [a for a in actions if isinstance(a, StartTunnel)] and state.capped
    assert any(isinstance(a, Log) and "RESTART BUDGET SPENT" in a.message for a in actions)
    state, later = replay(state, [tick(3505), tick(3510)])
    assert later == [[], []]  # keeps quiet, no restart
    state, actions = replay(state, [reset(3511)])
    assert actions == [[StartTunnel()]] and not state.capped and state.restarts == (3511,)


def test_budget_frees_up_after_an_hour() -> None:
    state = running_since(0)
    state = WatchState(**{**state.__dict__, "restarts": tuple(float(t) for t in range(100, 700, 100)),
                          "capped": True, "tunnel": "FATAL"})  # fmt: skip
    state, actions = replay(state, [tick(3650), tick(3705)])
    assert actions == [[], [StartTunnel()]]


def test_never_acts_while_starting_or_stopping() -> None:
    state = running_since(0)
    state, _ = replay(state, [tick(30), result(1, False, 31), result(2, False, 34)])
    state, actions = replay(state, [tunnel("STOPPING", 35), result(3, False, 37), tick(40)])
    assert not [a for step in actions for a in step if isinstance(a, (StartTunnel, StopTunnel))]


def test_a_tunnel_stopped_by_hand_is_left_alone() -> None:
    state = running_since(0)
    state, actions = replay(state, [tunnel("STOPPING", 10), tunnel("STOPPED", 11), tick(15), tick(60)])
    assert actions == [[], [], [], []] and not state.armed


def test_stale_or_unasked_probe_results_are_ignored() -> None:
    state = running_since(0)
    state, actions = replay(state, [result(7, False, 30), tick(30), result(99, False, 31)])
    assert actions == [[], [], []] and state.failures == 0 and state.in_flight == (1,)


def test_restart_history_survives_a_listener_restart() -> None:
    state = running_since(0)
    state, _ = replay(state, [tunnel("EXITED", 100)])
    saved = state_from_document(json.loads(json.dumps(state_document(state))))
    resumed = resume(CONFIG, saved, "RUNNING", 4242, 200)
    assert resumed.restarts == (100,) and resumed.backoff == 15 and resumed.armed
    assert resume(CONFIG, None, "STOPPED", 0, 200).armed is False
    assert resume(CONFIG, saved, "FATAL", 0, 200).armed is True


def test_consecutive_failures_survive_a_listener_restart_for_the_same_tunnel_process() -> None:
    state = running_since(0)
    state, _ = replay(state, [(Event("PROCESS_STATE_RUNNING", fields={"processname": "tunnel",
                      "groupname": "tunnel", "pid": "4242"}), 1)])  # fmt: skip
    state = healthy_until(state, 30)
    n = state.probe_id
    state, _ = replay(state, [result(n, False, 31.5), result(n + 1, False, 33.6)])
    assert state.failures == 2
    saved = state_from_document(json.loads(json.dumps(state_document(state))))
    same = resume(CONFIG, saved, "RUNNING", 4242, 34)
    assert same.failures == 2 and same.started_at == state.started_at
    # One more failed probe is the third: the restart comes now, not two probes later.
    same, actions = begin(CONFIG, same, 34)
    assert actions == [Probe(1, 0, 2)]
    same, actions = replay(same, [result(1, False, 35)])
    assert [StopTunnel()] in actions
    # A tunnel started anew meanwhile (another pid) starts from zero, with a fresh grace.
    other = resume(CONFIG, saved, "RUNNING", 5555, 34)
    assert other.failures == 0 and other.started_at == 34


def test_a_restart_the_operation_lock_defers_is_not_counted_and_is_tried_again() -> None:
    state = running_since(0)
    state, actions = replay(state, [tunnel("EXITED", 100)])
    assert actions == [[StartTunnel()]] and state.restarts == (100,)
    busy = json.dumps({"kind": "busy", "action": "start", "holder": "`down` (pid 7)"})
    state, actions = replay(
        state, [(Event("REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=busy), 101)]
    )
    assert state.restarts == () and actions == [[]]
    # Still down at the next tick: tried again (and counted once it goes through).
    state, actions = replay(state, [tick(105)])
    assert actions == [[StartTunnel()]] and state.restarts == (105,)


def test_public_rule() -> None:
    assert public_verdict(200, {}, "", [402]) == (True, "public URL: HTTP 200")
    assert public_verdict(404, {}, "", [402])[0] is True  # the app's own 404 is still a live tunnel
    assert public_verdict(404, {"Ngrok-Error-Code": "ERR_NGROK_3200"}, "", [402]) == (
        False, "public URL: HTTP 404 ERR_NGROK_3200",
    )  # fmt: skip
    assert public_verdict(402, {}, "", [402])[0] is False
    assert public_verdict(502, {}, "", [402])[0] is False
    assert public_verdict(None, {}, "ConnectTimeout", [402]) == (False, "public URL: ConnectTimeout")


def test_agent_rule_wants_a_tunnel_for_the_domain() -> None:
    listing = {"tunnels": [{"public_url": "https://other.ngrok.app"}]}
    assert agent_verdict(listing, "https://protea.ngrok.app")[0] is False
    listing["tunnels"].append({"public_url": "https://protea.ngrok.app"})
    assert agent_verdict(listing, "https://protea.ngrok.app")[0] is True
    assert agent_verdict({"tunnels": []}, "")[0] is False
    assert agent_verdict("garbage", "https://protea.ngrok.app")[0] is False


def test_with_the_budget_spent_it_keeps_probing_and_publishing_without_restarting() -> None:
    state = WatchState(tunnel="RUNNING", armed=True, failures=3, restarts=(10.0, 20.0, 30.0, 40.0, 50.0, 60.0),
                       capped=True, next_probe_at=100)  # fmt: skip
    state, actions = handle(CONFIG, state, tick(100)[0], 100)
    assert [a for a in actions if isinstance(a, Probe)] == [Probe(1, 0, 2)]
    state, actions = handle(CONFIG, state, result(1, False, 101)[0], 101)
    assert not [a for a in actions if isinstance(a, (StartTunnel, StopTunnel))]
    assert any(isinstance(a, Publish) and a.state.last_probe_at == 101 for a in actions)
    assert [a for a in actions if isinstance(a, Probe)] == [Probe(2, 10, 2)]  # the next one an interval later
    state, actions = handle(CONFIG, state, tick(115)[0], 115)
    assert actions == []
