"""The heartbeat listener's pure handler, by replaying event sequences; and the all-hosts judgement."""

from __future__ import annotations

from protea_supervisor.listeners.actions import Log
from protea_supervisor.listeners.heartbeat import BeatState, SendBeat, handle, sent
from protea_supervisor.listeners.protocol import Event

from protea_supervisor.hosts.heartbeats import Beat, flags, view

TICK = Event("TICK_5")


def state_event(name: str, state: str = "RUNNING") -> Event:
    return Event(f"PROCESS_STATE_{state}", fields={"groupname": name, "processname": name})


def replay(events: list[tuple[float, Event]], locks: dict[float, str] | None = None) -> list[float]:
    """The times at which a heartbeat is sent (each send succeeds at once); `locks`: the stack-owner lock
    from that time on."""
    state, times, lock = BeatState(), [], "free:"
    for now, event in events:
        lock = next((v for t, v in sorted((locks or {}).items(), reverse=True) if t <= now), lock)
        state, actions = handle(state, event, now, lock)
        for action in actions:
            if isinstance(action, SendBeat):
                state, _ = sent(state, "", now, lock)
                times.append(now)
    return times


def test_a_beat_at_every_tick_and_at_once_on_a_change_coalescing_bursts() -> None:
    ticks = [(t, TICK) for t in (5.0, 10.0, 15.0, 20.0, 25.0, 30.0)]
    assert replay(ticks) == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0]
    burst = [(5.0, TICK), (7.0, state_event("a", "STOPPING")), (7.2, state_event("a", "STOPPED")),
             (7.4, state_event("a", "STARTING")), (10.0, TICK), (11.0, state_event("a")), (15.0, TICK)]  # fmt: skip
    # 7.0 at once; 7.2 and 7.4 within a second of it, coalesced into the tick at 10.0; 11.0 at once.
    assert replay(burst) == [5.0, 7.0, 10.0, 11.0]


def test_beats_are_never_more_than_ten_seconds_apart_whatever_the_changes_between_the_ticks() -> None:
    """A beat sent for a change between two ticks left the next tick-driven beat waiting 9 s from it, so
    gaps of 12-14 s occurred; ticks come every 5 s, up to 0.4 s late."""
    import itertools
    import random

    rng = random.Random(26)
    for _ in range(200):
        ticks = [(5.0 * n + rng.uniform(0, 0.4), TICK) for n in range(1, 30)]
        changes = [(rng.uniform(5, 150), state_event("w", "EXITED")) for _ in range(rng.randint(0, 12))]
        times = replay(sorted(ticks + changes, key=lambda pair: pair[0]))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= 10.0, (max(gaps), times)


def test_a_change_of_the_stack_owner_lock_is_beaten_at_the_next_tick() -> None:
    """An export taken at 12.3 reaches the server's heartbeat at the 15.0 tick, even though a beat went out
    at 12.0 for a process change (a node learned of an export 11.6 s after it was taken)."""
    events = [(5.0, TICK), (10.0, TICK), (12.0, state_event("w")), (15.0, TICK), (20.0, TICK)]
    times = replay(events, locks={12.3: "export:exp-1"})
    assert 15.0 in times
    state = BeatState()
    state, _ = sent(state, "", 1.0, "free:")
    state, actions = handle(state, TICK, 2.0, "export:exp-1")
    assert actions == [SendBeat("stack-owner lock export:exp-1")]


def test_a_failed_send_is_logged_once_retried_at_the_next_tick_and_its_recovery_said() -> None:
    state, actions = handle(BeatState(), TICK, 5.0)
    assert actions == [SendBeat("interval")]
    state, said = sent(state, "psql failed: connection refused", 5.0)
    assert said == [Log("heartbeat: not sent: psql failed: connection refused")]
    state, actions = handle(state, TICK, 10.0)
    assert actions == [SendBeat("changes")]
    state, said = sent(state, "psql failed: connection refused", 10.0)
    assert said == []  # the same failure is not logged again
    state, actions = handle(state, TICK, 15.0)
    state, said = sent(state, "", 15.0)
    assert said == [Log("heartbeat: sent again after: psql failed: connection refused")]
    assert state.last_sent == 15.0 and not state.dirty


A, B = "a" * 40, "b" * 40


def test_the_all_hosts_view_flags_stale_hosts_and_workers_off_the_declared_revision() -> None:
    beats = [
        Beat("server-1", "server", A, ({"name": "api", "state": "RUNNING", "pid": 10, "revision": A},), 3.0),
        Beat("gpu-1", "node", A, (
            {"name": "worker-jobs-1", "state": "RUNNING", "pid": 20, "revision": B, "uptime_s": 90},
            {"name": "worker-jobs-2", "state": "EXITED", "pid": 0, "revision": "", "uptime_s": 0},
        ), 41.0),
    ]  # fmt: skip
    assert flags(beats, A, 30) == [
        "gpu-1: no heartbeat for 41 s (stale after 30 s)",
        "gpu-1: worker-jobs-1 runs bbbbbbbbbb, not the declared aaaaaaaaaa",
    ]
    assert flags(beats, None, 60) == []
    lines = view(beats, A, 30)
    assert lines[0] == "declared revision: aaaaaaaaaa"
    assert "gpu-1            node   heartbeat 41 s ago STALE  deployed aaaaaaaaaa" in lines
    assert lines[-1] == "PROBLEM: gpu-1: worker-jobs-1 runs bbbbbbbbbb, not the declared aaaaaaaaaa"
    assert view([], None, 30)[1].startswith("no host has sent a heartbeat")


def test_a_servers_export_is_read_from_its_heartbeat_even_a_stale_one() -> None:
    from protea_supervisor.hosts.heartbeats import server_export

    export = {"owner": "export", "task_id": "exp-1"}
    assert server_export([Beat("gpu-1", "node", A, (), 1.0, export)]) == ""  # only a server's lock counts
    assert server_export([Beat("server-1", "server", A, (), 3.0, {"owner": "deploy", "task_id": "t"})]) == ""
    assert server_export([Beat("server-1", "server", A, (), 400.0, export)]) == (
        "export task exp-1 holds server-1's stack-owner lock"
    )
    assert server_export([Beat("server-1", "server", A, (), 3.0, None)]) == ""


def test_queues_count_the_running_workers_of_every_other_fresh_host() -> None:
    from protea_supervisor.hosts.heartbeats import running_elsewhere

    def proc(group: str, state: str = "RUNNING") -> dict[str, object]:
        return {"name": group, "group": group, "state": state}

    beats = [
        Beat("server-1", "server", A, (proc("worker-jobs"),), 2.0),
        Beat(
            "gpu-1", "node", A, (proc("worker-jobs"), proc("worker-jobs"), proc("worker-eval", "FATAL")), 4.0
        ),
        Beat("gpu-2", "node", A, (proc("worker-jobs"),), 90.0),  # stale: what it runs is unknown
    ]
    assert running_elsewhere(beats, "server-1", 30) == {"worker-jobs": 2}
    assert running_elsewhere(beats, "gpu-1", 30) == {"worker-jobs": 1}


def test_a_singleton_queue_with_a_consumer_on_each_host_is_a_problem() -> None:
    def worker(state: str = "RUNNING") -> dict[str, object]:
        return {"name": "worker-embeddings-coord", "group": "worker-embeddings-coord", "state": state,
                "revision": A}  # fmt: skip

    singletons = {"worker-embeddings-coord": "protea.embeddings"}
    one = [Beat("server-1", "server", A, (worker(),), 1.0), Beat("gpu-1", "node", A, (worker("FATAL"),), 1.0)]
    assert flags(one, A, 30, singletons) == []
    two = [Beat("server-1", "server", A, (worker(),), 1.0), Beat("gpu-1", "node", A, (worker(),), 1.0)]
    assert flags(two, A, 30, singletons) == [
        "singleton queue protea.embeddings has 2 consumers: worker-embeddings-coord on server-1, "
        "worker-embeddings-coord on gpu-1"
    ]
    assert flags(two, A, 30) == []  # without the stack's singleton list, nothing to judge by


def test_a_worker_that_runs_no_revision_while_one_is_declared_is_a_problem() -> None:
    """Right after a node's first `up` its workers carry no PROTEA_REVISION until its follow tick moves
    them: that is not "no problem found". Listeners and the tunnel carry none and are no problem."""

    def proc(name: str, revision: str = "") -> dict[str, object]:
        return {"name": name, "group": name, "state": "RUNNING", "pid": 5, "revision": revision}

    beats = [Beat("gpu-1", "node", "", (proc("worker-jobs"), proc("heartbeat"), proc("gate")), 2.0),
             Beat("server-1", "server", A, (proc("worker-jobs", A), proc("tunnel"), proc("web")), 2.0)]  # fmt: skip
    assert flags(beats, A, 30) == ["gpu-1: worker-jobs runs no revision, not the declared aaaaaaaaaa"]
    assert flags(beats, None, 30) == []
