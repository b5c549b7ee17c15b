"""The metrics listener: state from events, and the families a scrape serves."""

from __future__ import annotations

from protea_supervisor.listeners.metrics import MetricsState, apply_event, from_process_info, samples
from protea_supervisor.listeners.protocol import Event


def event(state: str, name: str, group: str, pid: int = 0, expected: str = "") -> Event:
    fields = {"processname": name, "groupname": group}
    if pid:
        fields["pid"] = str(pid)
    if expected:
        fields["expected"] = expected
    return Event(f"PROCESS_STATE_{state}", fields=fields)


def families(state: MetricsState, files: dict[str, dict[str, object]] | None = None, now: float = 100.0):  # type: ignore[no-untyped-def]
    return {f.name: f for f in samples(state, files or {}, now, lambda pid: 1024.0 * pid)}


def test_a_crash_and_restart_show_as_state_changes_and_a_restart() -> None:
    state = from_process_info(
        [{"group": "api", "name": "api", "statename": "RUNNING", "pid": 7, "start": 10}]
    )
    for ev, at in [(event("EXITED", "api", "api", expected="0"), 50.0), (event("STARTING", "api", "api"), 51.0),
                   (event("RUNNING", "api", "api", pid=9), 52.0)]:  # fmt: skip
        state = apply_event(state, ev, at)
    got = families(state, now=60.0)
    assert got["protea_process_restarts"].samples == ((("api:api", "api"), 1.0),)
    assert got["protea_process_up"].samples == ((("api:api", "api"), 1.0),)
    assert got["protea_process_uptime_seconds"].samples == ((("api:api", "api"), 8.0),)
    assert got["protea_process_rss_bytes"].samples == ((("api:api", "api"), 9216.0),)
    running = [labels for labels, value in got["protea_process_state"].samples if value]
    assert running == [("api:api", "api", "RUNNING")]


def test_restarts_count_crashes_and_failed_starts_not_deploys_operators_or_one_shots() -> None:
    """Four deploys in a row (stop, start), a migrate and a tick run each time, an operator's stop and start:
    no restart, so ProteaProcessFlapping (more than 3 in 15 minutes) stays quiet on a healthy stack. A crash
    and two failed starts: three."""
    state = from_process_info(
        [{"group": "api", "name": "api", "statename": "RUNNING", "pid": 7, "start": 10}]
    )
    deploy = [
        event("STOPPING", "api", "api"), event("STOPPED", "api", "api"), event("STARTING", "api", "api"),
        event("RUNNING", "api", "api", pid=8), event("STARTING", "migrate", "migrate"),
        event("RUNNING", "migrate", "migrate", pid=9), event("EXITED", "migrate", "migrate", expected="1"),
        event("STARTING", "deploy-tick", "deploy-tick"), event("RUNNING", "deploy-tick", "deploy-tick", pid=10),
        event("EXITED", "deploy-tick", "deploy-tick", expected="0"),  # a failed tick is the tick's own alert
        event("EXITED", "migrate", "migrate", expected="0"),
    ]  # fmt: skip
    for ev in deploy * 4:
        state = apply_event(state, ev, 1.0)
    got = families(state)
    assert dict(got["protea_process_restarts"].samples) == {
        ("api:api", "api"): 0.0, ("migrate:migrate", "migrate"): 0.0, ("deploy-tick:deploy-tick", "deploy-tick"): 0.0
    }  # fmt: skip
    crash = [event("EXITED", "api", "api", expected="0"), event("STARTING", "api", "api"),
             event("BACKOFF", "api", "api"), event("STARTING", "api", "api"), event("BACKOFF", "api", "api"),
             event("STARTING", "api", "api"), event("RUNNING", "api", "api", pid=11)]  # fmt: skip
    for ev in crash:
        state = apply_event(state, ev, 2.0)
    assert dict(families(state)["protea_process_restarts"].samples)[("api:api", "api")] == 3.0


def test_a_down_process_has_no_uptime_or_rss_and_is_not_up() -> None:
    state = apply_event(MetricsState(), event("FATAL", "web", "web"), 1.0)
    got = families(state)
    assert got["protea_process_up"].samples == ((("web:web", "web"), 0.0),)
    assert (
        got["protea_process_uptime_seconds"].samples == () and got["protea_process_rss_bytes"].samples == ()
    )


def test_gate_tunnel_deploy_and_lock_come_from_their_files() -> None:
    files = {
        "gate": {"phase": "failed", "step": "api"},
        "tunnel": {"last_ok": True, "restarts": [10.0, 90.0], "consecutive_failures": 0},
        "deploy": {"revision": "abc", "previous": "def", "last_exit": 20, "last_tick_epoch": 95.0},
        "lock": {"owner": "export", "task_id": "exp-1"},
    }
    got = families(MetricsState(), files, now=3650.0)
    assert got["protea_gate_failed"].samples == (((), 1.0),)
    assert got["protea_tunnel_restarts_last_hour"].samples == (((), 1.0),)
    assert got["protea_deploy_info"].samples == ((("abc", "def"), 1.0),)
    assert got["protea_deploy_last_tick_exit_code"].samples == (((), 20.0),)
    assert got["protea_stack_owner"].samples == ((("export", "exp-1"), 1.0),)


def test_with_no_files_the_lock_reads_free() -> None:
    assert families(MetricsState())["protea_stack_owner"].samples == ((("free", ""), 1.0),)


def test_the_series_the_alert_rules_need_come_from_the_timer_the_queues_and_the_lock() -> None:
    state = from_process_info(
        [{"group": "api", "name": "api", "statename": "RUNNING", "pid": 7, "start": 10},
         {"group": "web", "name": "web", "statename": "RUNNING", "pid": 8, "start": 10}]
    )  # fmt: skip
    files = {
        "deploy": {"revision": "new"},
        "tunnel": {"last_ok": False, "capped": True},
        "timer": {"paused_until": 5000.0},
        "lock": {"owner": "export", "task_id": "exp-1", "since": 1000.0},
        "queues": {
            "checked_at": 3600.0,
            "queues": [{"name": "protea.jobs", "status": "starved", "messages": 4}],
        },
    }
    revisions = {7: "old", 8: "new"}
    got = {f.name: f for f in samples(state, files, 3650.0, lambda pid: None, revisions.get)}
    assert got["protea_processes_on_other_revision"].samples == (((), 1.0),)
    assert got["protea_tunnel_restart_budget_spent"].samples == (((), 1.0),)
    assert got["protea_deploy_paused_until_timestamp_seconds"].samples == (((), 5000.0),)
    assert got["protea_stack_owner_since_timestamp_seconds"].samples == ((("export",), 1000.0),)
    assert got["protea_queue_status"].samples == ((("protea.jobs", "starved"), 1.0),)
    assert got["protea_queue_messages"].samples == ((("protea.jobs",), 4.0),)
    assert got["protea_queue_checked_timestamp_seconds"].samples == (((), 3600.0),)


def test_after_an_api_switch_the_api_runs_with_the_successors_pid_and_the_successor_name_is_gone() -> None:
    state = from_process_info(
        [{"group": "api", "name": "api", "statename": "RUNNING", "pid": 7, "start": 10}]
    )
    switch = [
        event("STARTING", "api-next", "api"), event("RUNNING", "api-next", "api", pid=8),
        event("STOPPING", "api", "api"), event("STOPPED", "api", "api"),
        event("RUNNING", "api", "api", pid=8),  # the extension's event once the successor took the name
    ]  # fmt: skip
    for n, ev in enumerate(switch):
        state = apply_event(state, ev, 50.0 + n)
    got = families(state, now=60.0)
    assert got["protea_process_up"].samples == ((("api:api", "api"), 1.0),)
    assert got["protea_process_rss_bytes"].samples == ((("api:api", "api"), 8192.0),)
