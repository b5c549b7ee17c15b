"""The gate's decisions, replayed over event sequences: no supervisord, no clock, no network."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from protea_supervisor.listeners.gate_handler import (
    COMM_TYPE,
    OWN_REFUSAL,
    GatePlan,
    GateState,
    InfraTarget,
    Log,
    Probe,
    Proc,
    Publish,
    Start,
    handle,
    refresh,
    resume,
    snapshot,
    state_document,
    state_from_document,
)
from protea_supervisor.listeners.protocol import Event

from protea_supervisor.supervisord.probes import parse_infra

PLAN = GatePlan(
    infra=(InfraTarget("PROTEA_DB_URL", "127.0.0.1", 5432),),
    infra_timeout=180,
    migrate="migrate",
    api="api",
    api_url="http://127.0.0.1:8000/jobs",
    api_timeout=120,
    workers=("worker-ping", "worker-batch"),
    web="web",
    web_url="http://127.0.0.1:3000",
    web_timeout=60,
    tunnel="tunnel",
)
PROCS = {p.key: p for p in [Proc("migrate", "migrate", "STOPPED"), Proc("api", "api", "STOPPED"),
                            Proc("worker-ping", "worker-ping", "STOPPED"),
                            Proc("worker-batch", "worker-batch-1", "STOPPED"),
                            Proc("worker-batch", "worker-batch-2", "STOPPED"),
                            Proc("web", "web", "STOPPED"), Proc("tunnel", "tunnel", "STOPPED")]}  # fmt: skip


def state_event(state: str, group: str, name: str | None = None, expected: str = "1") -> Event:
    fields = {"processname": name or group, "groupname": group, "from_state": "STARTING"}
    if state == "EXITED":
        fields["expected"] = expected
    return Event(name=f"PROCESS_STATE_{state}", fields=fields)


def comm(message: dict[str, object]) -> Event:
    return Event(name="REMOTE_COMMUNICATION", fields={"type": COMM_TYPE}, data=json.dumps(message))


def probe(kind: str, ok: bool, generation: int = 1, detail: str = "") -> Event:
    return comm({"kind": "probe", "probe": kind, "ok": ok, "generation": generation, "detail": detail})


def replay(
    state: GateState, events: Iterable[Event], start: float = 100.0
) -> tuple[GateState, list[list[object]]]:
    log = []
    for offset, event in enumerate(events):
        state, actions = handle(PLAN, state, event, start + offset)
        log.append([a for a in actions if not isinstance(a, (Log, Publish))])
    return state, log


def boot() -> tuple[GateState, list[object]]:
    state, actions = resume(PLAN, None, PROCS, 100.0, same_supervisord=False)
    return state, [a for a in actions if not isinstance(a, (Log, Publish))]


def test_boot_runs_the_steps_in_order_each_only_after_the_last_is_ready() -> None:
    state, first = boot()
    assert first == [Probe("infra", 1)]
    state, steps = replay(state, [
        probe("infra", True),
        state_event("STARTING", "migrate"), state_event("RUNNING", "migrate"), state_event("EXITED", "migrate"),
        state_event("STARTING", "api"), state_event("RUNNING", "api"),
        probe("api", True),
        state_event("RUNNING", "web"),
        probe("web", True),
        state_event("RUNNING", "tunnel"),
        state_event("RUNNING", "worker-ping"),
        state_event("RUNNING", "worker-batch", "worker-batch-1"),
        state_event("RUNNING", "worker-batch", "worker-batch-2"),
    ])  # fmt: skip
    assert steps == [
        [Start("migrate:migrate")], [], [], [Start("api:api")], [], [Probe("api", 1)],
        [Start("web:web")], [Probe("web", 1)], [Start("tunnel:tunnel")],
        # The public chain is up: only now do the workers start, all at once.
        [Start("worker-ping:worker-ping"), Start("worker-batch:worker-batch-1"),
         Start("worker-batch:worker-batch-2")],
        [], [], [],
    ]  # fmt: skip
    assert state.phase == "done"
    assert list(state.steps) == ["infra", "migrate", "api", "web", "tunnel", "workers"]
    assert all(finished >= started > 0 for started, finished in state.steps.values())
    assert state.steps["workers"][0] == state.steps["tunnel"][1]


def test_a_worker_that_cannot_start_fails_the_run_after_the_tunnel_is_up() -> None:
    state = up_to_web()
    state, steps = replay(state, [state_event("RUNNING", "web"), probe("web", True),
                                  state_event("RUNNING", "tunnel"),
                                  state_event("FATAL", "worker-batch", "worker-batch-1")], start=104)  # fmt: skip
    assert steps[1] == [Start("tunnel:tunnel")]
    assert state.phase == "failed" and state.step == "workers"
    assert state.failed_process == "worker-batch:worker-batch-1"


def test_a_worker_a_check_refused_is_final_and_the_run_finishes_without_it() -> None:
    """A singleton another host holds: the wrapper refuses the start (exit 78) and records why; the edge
    hands the reason in with the FATAL event. The run is done, not failed (a node's follow tick saw the gate
    fail on it, stopped every worker, and did so again every 5 s)."""
    state = up_to_web()
    refused = Event("PROCESS_STATE_FATAL", fields={
        "processname": "worker-batch-1", "groupname": "worker-batch", "from_state": "BACKOFF",
        "refused": "singleton protea.embeddings.batch is held by worker-batch-1 on server-1"})  # fmt: skip
    state, _steps = replay(state, [state_event("RUNNING", "web"), probe("web", True),
                                   state_event("RUNNING", "tunnel"), refused,
                                   state_event("RUNNING", "worker-ping"),
                                   state_event("RUNNING", "worker-batch", "worker-batch-2")], start=104)  # fmt: skip
    assert state.phase == "done", (state.phase, state.reason)


def test_a_worker_that_exited_78_on_its_own_is_final_and_not_started_again() -> None:
    """A worker the operator started before the gate reached it, that exited 78 after its startsecs (its own
    configuration check): the reviver takes that as final, and so does the gate, whether it reads the exit in
    supervisord's list (a start or refresh) or the edge hands it in with the EXITED event. It was started
    again when the gate reached the workers step late (CI, on a loaded machine)."""
    info = {
        "group": "worker-ping",
        "name": "worker-ping",
        "statename": "EXITED",
        "exitstatus": 78,
        "stop": 99,
    }
    listed = snapshot([info])["worker-ping:worker-ping"]
    assert listed.refused == OWN_REFUSAL
    assert not snapshot([{**info, "exitstatus": 1}])["worker-ping:worker-ping"].refused
    fields = {
        "processname": "worker-ping",
        "groupname": "worker-ping",
        "from_state": "RUNNING",
        "expected": "0",
    }
    handed_in = Event("PROCESS_STATE_EXITED", fields={**fields, "refused": OWN_REFUSAL})
    for exited in ([], [handed_in]):  # already in the list the gate started from; or told by the edge
        state = up_to_web()
        if not exited:
            state = replace(state, processes={**state.processes, listed.key: listed})
        state, steps = replay(state, [*exited, state_event("RUNNING", "web"), probe("web", True),
                                      state_event("RUNNING", "tunnel"),
                                      state_event("RUNNING", "worker-batch", "worker-batch-1"),
                                      state_event("RUNNING", "worker-batch", "worker-batch-2")], start=104)  # fmt: skip
        assert Start("worker-ping:worker-ping") not in [a for actions in steps for a in actions]
        assert state.phase == "done", (state.phase, state.reason)


def test_failing_migration_stops_the_gate_and_starts_nothing_after_it() -> None:
    state, _ = boot()
    state, steps = replay(
        state,
        [
            probe("infra", True),
            state_event("RUNNING", "migrate"),
            state_event("EXITED", "migrate", expected="0"),
            probe("api", True),
        ],
    )
    assert steps == [[Start("migrate:migrate")], [], [], []]
    assert state.phase == "failed" and state.step == "migrate"
    assert state.failed_process == "migrate:migrate" and "non-zero" in state.reason


def test_api_never_ready_fails_with_the_url_and_workers_never_start() -> None:
    state, _ = boot()
    state, steps = replay(
        state,
        [
            probe("infra", True),
            state_event("EXITED", "migrate"),
            state_event("RUNNING", "api"),
            probe("api", False, detail="HTTP 503"),
        ],
    )
    assert steps[-1] == []
    assert state.phase == "failed" and state.step == "api"
    assert state.reason == "api did not answer http://127.0.0.1:8000/jobs with 2xx within 120 s"


def test_closed_infra_port_fails_naming_the_port_not_the_url() -> None:
    state, _ = boot()
    state, _ = replay(state, [probe("infra", False, detail="127.0.0.1:5432 (PROTEA_DB_URL)")])
    assert state.phase == "failed"
    assert "127.0.0.1:5432 (PROTEA_DB_URL)" in state.reason and "180 s" in state.reason


def test_stale_probe_results_from_an_earlier_run_are_ignored() -> None:
    state, _ = boot()
    state, steps = replay(state, [probe("infra", True, generation=0)])
    assert steps == [[]] and state.step == "infra" and state.phase == "running"


def test_fatal_api_fails_the_gate() -> None:
    state, _ = boot()
    state, _ = replay(
        state, [probe("infra", True), state_event("EXITED", "migrate"), state_event("FATAL", "api")]
    )
    assert state.phase == "failed" and state.failed_process == "api:api"


def test_start_while_running_joins_the_run_and_start_after_done_runs_again() -> None:
    state, _ = boot()
    state, steps = replay(state, [comm({"command": "start", "request": "r1"})])
    assert steps == [[]] and state.generation == 1 and "r1" in state.requests
    done = GateState(phase="done", generation=1, since=50.0, processes=PROCS)
    again, steps = replay(done, [comm({"command": "start", "request": "r2"})])
    assert again.generation == 2 and again.since == 100.0 and steps == [[Probe("infra", 2)]]


def test_retry_keeps_a_migration_that_already_passed() -> None:
    migrated = {**PROCS, "migrate:migrate": Proc("migrate", "migrate", "EXITED", True, stopped_at=60.0)}
    failed = GateState(phase="failed", generation=1, since=50.0, processes=migrated,
                       probes={"infra": True}, reason="api ...")  # fmt: skip
    state, steps = replay(failed, [comm({"command": "retry", "request": "r"})])
    assert steps == [[Probe("infra", 2)]]
    state, steps = replay(state, [probe("infra", True, generation=2)])
    assert steps == [[Start("api:api")]]  # migrate is not run again
    _, steps = replay(failed, [comm({"command": "start"}), probe("infra", True, generation=2)])
    assert steps[-1] == [Start("migrate:migrate")]  # a new start runs it again


def test_listener_restart_mid_gate_resumes_from_the_saved_state_and_asks_lost_probes_again() -> None:
    state, _ = boot()
    state, _ = replay(
        state, [probe("infra", True), state_event("EXITED", "migrate"), state_event("RUNNING", "api")]
    )
    assert state.pending == frozenset({"api"})
    saved = state_from_document(json.loads(json.dumps(state_document(state, supervisord_pid=7))))
    now_procs = {**PROCS, "migrate:migrate": Proc("migrate", "migrate", "EXITED", True, 101.0),
                 "api:api": Proc("api", "api", "RUNNING")}  # fmt: skip
    resumed, actions = resume(PLAN, saved, now_procs, 200.0, same_supervisord=True)
    assert [a for a in actions if isinstance(a, (Start, Probe))] == [Probe("api", 1)]
    assert resumed.phase == "running" and resumed.step == "api"


def test_listener_restart_on_a_new_supervisord_runs_the_gate_but_not_over_a_running_stack() -> None:
    saved = GateState(phase="done", generation=4)
    fresh, actions = resume(PLAN, saved, PROCS, 300.0, same_supervisord=False)
    assert fresh.phase == "running" and fresh.generation == 5 and Probe("infra", 5) in actions
    running = {**PROCS, "api:api": Proc("api", "api", "RUNNING")}
    idle, actions = resume(PLAN, None, running, 300.0, same_supervisord=False)
    assert idle.phase == "idle" and not [a for a in actions if isinstance(a, (Start, Probe))]


def test_parse_infra_takes_host_and_port_never_the_password() -> None:
    env = {"PROTEA_DB_URL": "postgresql+psycopg://protea:pw@127.0.0.1/protea", "PROTEA_AMQP_URL": "amqp://g:g@h:5673/",
           "BAD": "not a url"}  # fmt: skip
    targets, problems = parse_infra(["PROTEA_DB_URL", "PROTEA_AMQP_URL", "BAD", "UNSET"], env)
    assert targets == [
        InfraTarget("PROTEA_DB_URL", "127.0.0.1", 5432),
        InfraTarget("PROTEA_AMQP_URL", "h", 5673),
    ]
    assert problems == [
        "BAD has no host and port this gate can check",
        "UNSET is not set; its port is not checked",
    ]
    assert "pw" not in repr(targets)


def up_to_web() -> GateState:
    """A gate run that has reached the web step at t=103 (web asked to start)."""
    state, _ = boot()
    state, _ = replay(state, [probe("infra", True), state_event("EXITED", "migrate"),
                              state_event("RUNNING", "api"), probe("api", True)])  # fmt: skip
    assert state.step == "web"
    return state


def test_a_process_a_scale_down_dropped_is_neither_waited_for_nor_started() -> None:
    state = up_to_web()
    # worker-batch-2 was removed by a scale-down (no event says so): the live list no longer has it.
    live = {k: p for k, p in state.processes.items() if p.name != "worker-batch-2"}
    state, actions = refresh(PLAN, state, live, 104.0)
    state, steps = replay(state, [state_event("RUNNING", "web"), probe("web", True),
                                  state_event("RUNNING", "tunnel"), state_event("RUNNING", "worker-ping"),
                                  state_event("RUNNING", "worker-batch", "worker-batch-1")], start=105)  # fmt: skip
    assert steps[0] == [Probe("web", 1)]
    assert state.phase == "done"  # without worker-batch-2
    assert not any(isinstance(a, Start) and "batch-2" in a.namespec for a in actions)


def test_a_new_run_starts_processes_that_exist_now_and_not_those_that_did() -> None:
    state, _ = boot()
    state = replace(state, phase="done")
    live = {k: p for k, p in PROCS.items() if p.name != "worker-batch-2"}
    state, _ = refresh(PLAN, state, live, 150.0)  # what the edge does before a start request
    state, steps = replay(state, [comm({"command": "retry", "request": "r1"}), probe("infra", True, 2),
                                  state_event("EXITED", "migrate"), state_event("RUNNING", "api"),
                                  probe("api", True, 2), state_event("RUNNING", "web"), probe("web", True, 2),
                                  state_event("RUNNING", "tunnel")], start=151)  # fmt: skip
    started = [a.namespec for step in steps for a in step if isinstance(a, Start)]
    assert "worker-batch:worker-batch-2" not in started and "worker-batch:worker-batch-1" in started


def test_a_step_whose_processes_never_run_fails_within_its_deadline_naming_them() -> None:
    state = up_to_web()
    state, _ = replay(state, [state_event("RUNNING", "worker-ping"), state_event("RUNNING", "web"),
                              probe("web", True), state_event("RUNNING", "tunnel")], start=104)  # fmt: skip
    assert state.step == "workers" and state.steps["workers"][0] == 107
    state, _ = refresh(PLAN, state, state.processes, 166.0)
    assert state.phase == "running"  # 59 s after the workers were started: within the 60 s start_timeout
    state, _ = refresh(PLAN, state, state.processes, 168.0)
    assert state.phase == "failed" and state.step == "workers"
    assert "worker-batch-1 STARTING" not in state.reason and "worker-batch-1 STOPPED" in state.reason
    assert state.reason.endswith("did not reach RUNNING within 60 s")


def test_a_wall_clock_stepped_back_neither_lengthens_nor_shortens_a_steps_deadline() -> None:
    state = up_to_web()
    state, _ = replay(state, [state_event("RUNNING", "worker-ping"), state_event("RUNNING", "web"),
                              probe("web", True), state_event("RUNNING", "tunnel")], start=104)  # fmt: skip
    assert state.step == "workers" and state.steps["workers"][0] == 107
    state, _ = refresh(PLAN, state, state.processes, 120.0)
    # The clock steps back 49 s (120 -> 71): the step began at 58 on the new clock, its deadline is 118.
    state, actions = refresh(PLAN, state, state.processes, 71.0)
    assert state.phase == "running" and state.steps["workers"][0] == 58
    assert any("stepped back 49 s" in a.message for a in actions if isinstance(a, Log))
    state, _ = refresh(PLAN, state, state.processes, 116.0)
    assert state.phase == "running"
    state, _ = refresh(PLAN, state, state.processes, 118.0)
    assert state.phase == "failed" and state.reason.endswith("did not reach RUNNING within 60 s")


def test_cancel_stops_a_running_gate_and_later_events_start_nothing() -> None:
    state = up_to_web()
    state, steps = replay(state, [comm({"command": "cancel", "reason": "`down`"}),
                                  state_event("RUNNING", "web"), probe("web", True)], start=104)  # fmt: skip
    assert state.phase == "cancelled" and steps == [[], [], []]
    assert "down" in state.reason


def test_a_refresh_keeps_the_exact_exit_time_of_a_migration_that_already_passed() -> None:
    state = up_to_web()
    # supervisord's own `stop` is in whole seconds: before the run's `since` when read back.
    live = {**state.processes, "migrate:migrate": Proc("migrate", "migrate", "EXITED", True, 99.0)}
    state, _ = refresh(PLAN, state, live, 110.0)
    assert state.phase == "running" and state.step == "web"


def test_a_request_joining_a_running_gate_is_published_at_once_and_a_repeat_is_ignored() -> None:
    state, _ = boot()
    state, actions = handle(PLAN, state, comm({"command": "start", "request": "up-1"}), 101.0)
    assert "up-1" in state.requests
    assert any(isinstance(a, Publish) and "up-1" in a.state.requests for a in actions)
    again, actions = handle(PLAN, state, comm({"command": "start", "request": "up-1"}), 102.0)
    assert again == state and actions == []


def test_a_migration_that_exited_within_the_runs_first_second_counts_whatever_precision_it_was_read_in() -> (
    None
):
    # A retry keeps `since`; supervisord's own stop time (a listener start, a refresh) is in whole seconds.
    state = replace(boot()[0], phase="failed", since=100.6)
    live = {**PROCS, "migrate:migrate": Proc("migrate", "migrate", "EXITED", True, 100.0)}
    state, _ = refresh(PLAN, state, live, 110.0)
    state, steps = replay(
        state, [comm({"command": "retry", "request": "r"}), probe("infra", True, 2)], start=111
    )
    assert [Start("migrate:migrate")] not in steps and state.step == "api"


def test_an_infra_url_that_cannot_be_split_is_a_problem_not_a_crash() -> None:
    targets, problems = parse_infra(
        ["PROTEA_DB_URL"], {"PROTEA_DB_URL": "postgresql://u:p@[not-ipv6]:5432/db"}
    )
    assert targets == [] and problems == ["PROTEA_DB_URL has no host and port this gate can check"]


def test_a_run_plans_the_workers_supervisord_runs_now_not_those_of_the_listeners_start() -> None:
    """`scale` of a queue from 0 leaves the gate running: the next run's plan takes the worker groups from
    supervisord's live processes (roles, listeners and one-shots are not workers)."""
    live = {**PROCS, **{p.key: p for p in [Proc("worker-jobs", "worker-jobs", "STOPPED"),
                                           Proc("gate", "gate", "RUNNING"), Proc("deploy-tick", "deploy-tick", "EXITED"),
                                           Proc("heartbeat", "heartbeat", "RUNNING")]}}  # fmt: skip
    assert PLAN.with_live_workers(live).workers == ("worker-batch", "worker-jobs", "worker-ping")
    without = {k: p for k, p in live.items() if p.group != "worker-ping"}
    assert PLAN.with_live_workers(without).workers == ("worker-batch", "worker-jobs")
