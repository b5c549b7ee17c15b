"""Regressions for what an operator saw go wrong (issue 13): each test replays one observed sequence or fault
on a real supervisord and checks that the stack ends as the tool says."""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, Stack, free_port, ps, stack_file, wait_for
from deploy_app import AppRepo, deploy_stack, git, record, serving
from rabbit import WORKER_COMMAND, publish

from protea_supervisor.supervisord import orphans

pytestmark = pytest.mark.integration


def tree(*roots: Path) -> dict[str, str]:
    """Every path under `roots` with its content's hash (a symlink's target): what a dry run must not touch."""
    seen = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_symlink():
                seen[key] = "-> " + os.readlink(path)
            elif path.is_file() and path.suffix not in (".sock", ".log") and path.name != "tunnel-watch.json":
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                seen[key] = "present"
    return seen


def test_dry_runs_create_nothing_and_a_dry_tick_never_moves_a_root_holding_the_run_dir(
    short_tmp: Path,
) -> None:
    # The demo's layout: the run dir and the logs are inside paths.root, which is not a git worktree.
    stack = Stack(stack_file(short_tmp, extra={"deploy": {"repository": "{root}/repository"}}))
    for args in (["render", "--check"], ["render", "--diff"], ["tick", "--dry-run"]):
        result = stack.ps(*args)
        assert result.code in (0, 30), result.both
        assert not (short_tmp / "run").exists() and not (short_tmp / "logs").exists(), args
    try:
        assert stack.ps("up").code == 0
        before = tree(short_tmp)
        for args in (
            ["render", "--check"],
            ["render", "--diff"],
            ["reload", "--dry-run"],
            ["tick", "--dry-run"],
        ):
            result = stack.ps(*args)
            assert result.code in (0, 30), result.both
            assert "moved" not in result.out and "recreating" not in result.out, result.out
        assert tree(short_tmp) == before
        assert stack.ps("status").code == 0 and stack.status()["api"]["state"] == "RUNNING"
    finally:
        down = stack.ps("down", "--force")
        assert down.code == 0 and "stack is down" in down.out, down.both


@pytest.fixture
def timer_host(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> tuple[AppRepo, Stack]:
    """The app at v1 deployed by a first tick, with the deploy timer running (its tick can be triggered)."""
    repo = AppRepo(short_tmp)
    timer = {"deploy": {"enabled": True, "poll_interval": 3600, "check_interval": 0}}
    stack = deploy_stack(short_tmp, repo, queue_name, extra=timer)
    supervisord(stack)
    first = stack.ps("tick")
    assert first.code == 10, first.both
    return repo, stack


def test_a_hand_tick_beside_the_timers_tick_waits_for_it_and_the_record_matches_what_runs(
    timer_host: tuple[AppRepo, Stack],
) -> None:
    repo, stack = timer_host
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    assert stack.ps("trigger", "x").code == 0
    wait_for(lambda: stack.status()["deploy-tick"]["state"] == "RUNNING", 20, "the timer's tick to start")
    hand = stack.ps("tick")
    assert hand.code == 0, hand.both  # it waited for the timer's tick, which deployed v2
    deploys = json.loads(stack.ps("deploys", "--json").out)
    assert deploys[0]["revision"] == rev2 and deploys[0]["trigger"] == "timer (trigger:manual)", deploys[0]
    assert "waiting for the host: `tick`" in hand.out and f"already on {rev2[:10]}" in hand.out, hand.out
    wait_for(lambda: stack.status()["deploy-tick"]["state"] == "EXITED", 60, "the timer's tick to end")
    doc = record(stack)
    assert doc["revision"] == rev2 == git(repo.worktree, "rev-parse", "HEAD") and not doc["failed"]
    assert serving(stack) == f"v2 {rev2}"
    assert "older revision" not in stack.ps("status").out


@pytest.mark.slow
def test_a_fresh_host_deploys_with_one_up_and_a_tick_with_supervisord_down_blames_nothing(
    short_tmp: Path, queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = deploy_stack(
        short_tmp, repo, queue_name, extra={"deploy": {"enabled": True, "check_interval": 0}}
    )
    try:
        early = stack.ps("tick")
        assert early.code == 50 and "protea-supervisor up" in early.out, early.both
        # A fresh host has the repository's clone and no worktree yet: the first up makes it.
        git(repo.repository, "worktree", "remove", "--force", str(repo.worktree))
        up = stack.ps("up")  # nothing built, no record: the first up is the first deploy
        assert up.code == 0, up.both
        assert f"worktree {repo.worktree} is missing; recreating it" in up.out
        rev1 = git(repo.dev, "rev-parse", "HEAD")
        assert serving(stack) == f"v1 {rev1}" and record(stack)["revision"] == rev1
        served = os.readlink(stack.root / "run" / "web-current")

        assert stack.ps("down").code == 0
        rev2 = repo.commit("v2", {"VERSION": "v2\n", "apps/web/page.txt": "2"})
        down_tick = stack.ps("tick")
        assert down_tick.code == 50 and "nothing was changed" in down_tick.out, down_tick.both
        assert record(stack)["failed"] == [] and record(stack)["revision"] == rev1
        assert git(repo.worktree, "rev-parse", "HEAD") == rev1
        assert os.readlink(stack.root / "run" / "web-current") == served

        assert stack.ps("up").code == 0 and serving(stack) == f"v1 {rev1}"
        later = stack.ps("tick")
        assert later.code == 10, later.both
        assert serving(stack) == f"v2 {rev2}" and record(stack)["revision"] == rev2
    finally:
        stack.ps("down", "--force")


def rabbit_stack(root: Path, queue: str, processes: int, **extra: object) -> Stack:
    settings = {"processes": processes, "numbered": True, "command": WORKER_COMMAND, "stop_grace": 30}
    return Stack(stack_file(root, queues={queue: settings}, extra=dict(extra)))


def acked(stack: Stack) -> collections.Counter[int]:
    path = stack.root / "acks.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return collections.Counter(int(line.split()[0]) for line in lines)


def test_scale_down_without_waiting_then_up_again_ends_with_exactly_the_requested_workers(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    stack = rabbit_stack(short_tmp, queue_name, 3)
    program = "worker-" + queue_name.replace(".", "-")
    supervisord(stack)
    assert stack.ps("up").code == 0
    # Long enough that the wait below outlasts several progress lines, even on a loaded machine.
    publish(queue_name, 3, seconds=15)
    publish(queue_name, 3, seconds=1, first=3)
    wait_for(
        lambda: all("started" in stack.log(f"{program}-{n}") for n in (1, 2, 3)), 30, "three busy workers"
    )
    assert stack.ps("scale", queue_name, "1", "--no-wait").code == 0
    again = stack.ps("scale", queue_name, "3")
    assert again.code == 0, again.both
    assert "still finishing a job; waiting before adding them again" in again.out, again.out
    # The wait for their jobs says where it is at least every 2 s.
    said = [int(n) for n in re.findall(r"waiting for .*\((\d+) s\)$", again.out, re.MULTILINE)]
    assert said and said[0] == 0 and all(b - a <= 3 for a, b in itertools.pairwise(said)), again.out
    assert max(said) >= 2, again.out  # the jobs had seconds left: several lines, not one
    names = {n: p["state"] for n, p in stack.status().items() if n.startswith(program)}
    assert names == {f"{program}-{n}": "RUNNING" for n in (1, 2, 3)}, names
    assert json.loads((stack.root / "run" / "overrides.json").read_text())["processes"][program] == 3
    assert "nothing to do" in stack.ps("reload", "--dry-run").out
    wait_for(lambda: sum(acked(stack).values()) >= 6, 60, "every job acked")
    assert set(acked(stack).values()) == {1} and sorted(acked(stack)) == list(range(6))


def test_the_gate_never_starts_a_process_a_scale_down_removed(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.predictions.batch": {"numbered": True}}))
    supervisord(stack)
    assert stack.ps("up", "2").code == 0
    began = time.monotonic()
    smaller = stack.ps("up", "1")
    assert smaller.code == 0, smaller.both
    assert stack.ps("scale", "protea.predictions.batch", "2").code == 0
    assert stack.ps("scale", "protea.predictions.batch", "1").code == 0
    retried = stack.ps("gate", "retry")
    assert retried.code == 0, retried.both
    assert time.monotonic() - began < 60
    assert "BAD_NAME" not in stack.log("gate")
    workers = [n for n in stack.status() if n.startswith("worker-predictions-batch")]
    assert workers == ["worker-predictions-batch-1"]


def test_orphans_of_a_killed_supervisord_are_shown_then_stopped_gracefully_by_up(
    short_tmp: Path, queue_name: str
) -> None:
    stack = rabbit_stack(short_tmp, queue_name, 2)
    program = "worker-" + queue_name.replace(".", "-")
    socket = short_tmp / "run" / "supervisor.sock"
    try:
        assert stack.ps("up").code == 0
        publish(queue_name, 4, seconds=3)
        wait_for(lambda: all("started" in stack.log(f"{program}-{n}") for n in (1, 2)), 30, "busy workers")
        os.kill(int((short_tmp / "run" / "supervisord.pid").read_text()), signal.SIGKILL)
        wait_for(lambda: stack.ps("status").code == 6, 20, "supervisord gone")
        left = orphans.find(socket, None)
        assert {o.program for o in left} >= {"api", "web", "tunnel", f"{program}-1", f"{program}-2"}
        status = stack.ps("status")
        assert status.code == 6 and "still run without it" in status.err, status.both
        assert all(f"{name} (pid" in status.err for name in ("api", "web", f"{program}-1")), status.both
        up = stack.ps("up")
        assert up.code == 0, up.both
        assert "orphaned process group(s)" in up.out and "orphans stopped" in up.out
        assert "killed after their grace" not in up.out  # they finished their jobs on TERM
        assert not orphans.find(socket, int((short_tmp / "run" / "supervisord.pid").read_text()))
        # An orphan's output has nowhere to go (its supervisord held the pipe), so the journal is the
        # witness: every job acked exactly once, none cut off and run again.
        wait_for(lambda: sum(acked(stack).values()) >= 4, 60, "every job acked")
        assert set(acked(stack).values()) == {1} and sorted(acked(stack)) == [0, 1, 2, 3]
    finally:
        stack.ps("down", "--force")
        for orphan in orphans.find(socket, None):
            os.killpg(orphan.pgid, signal.SIGKILL)


def test_the_watchdog_is_the_only_restarter_of_a_tunnel_that_exits_at_once(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    fast = {"probe_interval": 1, "probe_timeout": 1, "failures": 3, "confirm_interval": 0.5, "grace": 2,
            "backoff_initial": 1, "backoff_max": 2, "max_restarts_per_hour": 3}  # fmt: skip
    stack = Stack(stack_file(short_tmp, extra={"tunnel_watch": fast}))
    supervisord(stack)
    assert "startretries=0" in stack.conf.read_text().split("[program:tunnel]")[1].split("[")[0]
    assert stack.ps("up").code == 0
    (short_tmp / "tunnel-control").write_text("sticky-exit")
    state = short_tmp / "run" / "tunnel-watch.json"
    wait_for(lambda: json.loads(state.read_text()).get("capped"), 60, "the budget to be spent")
    spawned = (short_tmp / "run" / "supervisord.log").read_text().count("spawned: 'tunnel'")
    restarts = len(json.loads(state.read_text())["restarts"])
    assert restarts == 3 and spawned == 1 + restarts  # the gate's start, then only the watchdog's


def test_the_stack_owner_lock_is_shown_as_it_is_and_found_where_the_shell_tool_finds_it(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    metrics = free_port()
    stack = Stack(stack_file(short_tmp, extra={"metrics": {"enabled": True, "port": metrics}}))
    supervisord(stack)
    assert stack.ps("up").code == 0
    lock_file = short_tmp / "stack-owner.json"
    lock_file.write_text("{not json")
    status = stack.ps("status")
    assert "stack-owner lock: CORRUPT" in status.out and "lock: free" not in status.out
    assert json.loads(stack.ps("status", "--json").out)["lock"]["owner"] == "corrupt"
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as response:
        assert 'protea_stack_owner{owner="corrupt"' in response.read().decode()
    assert stack.ps("reload").code == 5  # would interrupt an export it cannot rule out
    tick = stack.ps("tick")
    assert tick.code == 50 and "lock file" in tick.out, tick.both
    down = stack.ps("down", "--force")  # the unit's ExecStop
    assert down.code == 0, down.both

    farm = short_tmp / "farm"
    acquired = ps("lock", "acquire", "export", "farm-exp-1", "r", env={"AGENT_FARM_ROOT": str(farm)})
    assert acquired.code == 0, acquired.both
    shell_file = farm / "state" / "stack-owner.json"
    assert json.loads(shell_file.read_text())["task_id"] == "farm-exp-1"
    assert shell_file.stat().st_mode & 0o777 == 0o600
    for bad in ("nan", "inf", "-1"):
        refused = ps(
            "lock", "current", env={"STACK_OWNER_FILE": str(shell_file), "STACK_OWNER_FLOCK_TIMEOUT_SEC": bad}
        )
        assert refused.code == 1 and refused.err.startswith("error: STACK_OWNER_FLOCK_TIMEOUT_SEC"), (
            refused.both
        )


COUNTER = textwrap.dedent(
    """
    import signal, sys, time
    got = []
    signal.signal(signal.SIGTERM, lambda *_: got.append(1))
    print("ready", flush=True)
    end = time.monotonic() + 30
    while time.monotonic() < end and not got:
        time.sleep(0.05)
    time.sleep(0.5)  # a second delivery would land here
    open(sys.argv[1], "w").write(str(len(got)))
    """
)


@pytest.mark.parametrize("to_group", [True, False])
def test_lock_run_passes_a_signal_to_the_command_exactly_once(tmp_path: Path, to_group: bool) -> None:
    counted = tmp_path / "count"
    wrapper = subprocess.Popen(
        [PS, "lock", "--file", str(tmp_path / "l.json"), "run", "t", "r", "--", sys.executable, "-c", COUNTER,
         str(counted)], stdout=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    assert wrapper.stdout is not None and wrapper.stdout.readline().strip() == "ready"
    if to_group:
        os.killpg(wrapper.pid, signal.SIGTERM)  # as a terminal or a service manager sends it
    else:
        os.kill(wrapper.pid, signal.SIGTERM)
    assert wrapper.wait(20) == 0
    assert counted.read_text() == "1"
    assert json.loads((tmp_path / "l.json").read_text())["owner"] == "free"


def test_bounds_are_refused_in_one_line_and_a_shadowed_count_is_reported_until_reset(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.predictions.batch": {"numbered": True}}))
    supervisord(stack)
    assert stack.ps("up").code == 0
    began = time.monotonic()
    huge = stack.ps("scale", "protea.predictions.batch", "99999999999999999999")
    assert huge.code == 1 and len(huge.err.splitlines()) == 1 and time.monotonic() - began < 10, huge.both
    assert stack.ps("scale", "protea.predictions.batch", "101").code == 1
    assert stack.ps("up", "101").code == 1
    assert stack.ps("scale", "protea.predictions.batch", "3").code == 0
    # The stack file now asks for 2: the override (3) shadows it, and every view says so.
    stack.file.write_text(stack.file.read_text().replace('[queues."protea.predictions.batch"]\n',
                          '[queues."protea.predictions.batch"]\nprocesses = 2\n'))  # fmt: skip
    note = 'queues."protea.predictions.batch".processes is 2 in'
    for args in (["render", "--diff"], ["reload", "--dry-run"], ["status"], ["render"]):
        assert note in stack.ps(*args).out, args
    reset = stack.ps("scale", "protea.predictions.batch", "--reset")
    assert reset.code == 0 and "3 -> 2" in reset.out, reset.both
    assert note not in stack.ps("status").out
    assert [n for n in stack.status() if n.startswith("worker-predictions-batch")] == [
        "worker-predictions-batch-1", "worker-predictions-batch-2",
    ]  # fmt: skip


def test_up_after_an_interrupted_down_starts_the_listeners_and_the_stack_again(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, job_seconds=4))
    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(lambda: "started" in stack.log("worker-ping"), 20, "a job in flight")
    down = subprocess.Popen([PS, "--stack", str(stack.file), "down"], stdout=subprocess.PIPE, text=True)
    assert down.stdout is not None
    wait_for(lambda: "waiting for" in (down.stdout.readline() or ""), 20, "down to wait for the drain")
    down.send_signal(signal.SIGINT)  # the operator's Ctrl-C
    assert down.wait(20) == 130
    wait_for(lambda: stack.status()["gate"]["state"] == "STOPPED", 30, "everything to be stopped")
    assert "the gate listener is STOPPED" in stack.ps("status").out
    up = stack.ps("up")
    assert up.code == 0 and "starting the stopped listener(s)" in up.out, up.both
    status = stack.status()
    assert all(status[n]["state"] == "RUNNING" for n in ("gate", "api", "web", "tunnel", "worker-ping"))


HOLD_LOCK = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from protea_supervisor.locks.operation import operation
    with operation(Path(sys.argv[1]), "scale (test)", 5, print):
        print("held", flush=True)
        sys.stdin.readline()
    """
)


def test_a_command_that_waited_for_the_host_reads_the_counts_recorded_meanwhile(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(
        stack_file(short_tmp, queues={"protea.predictions.batch": {"numbered": True, "processes": 2}})
    )
    supervisord(stack)
    assert stack.ps("up").code == 0
    run = short_tmp / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    reload = subprocess.Popen([PS, "--stack", str(stack.file), "reload"], stdout=subprocess.PIPE, text=True)
    assert reload.stdout is not None
    wait_for(lambda: "waiting for the host" in (reload.stdout.readline() or ""), 20, "reload to wait")
    # What a `scale` holding the host records while the reload waits.
    (run / "overrides.json").write_text(
        json.dumps({"processes": {"worker-predictions-batch": 1}, "numbered": []})
    )
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.close()
    assert holder.wait(20) == 0 and reload.wait(120) == 0
    workers = [n for n in stack.status() if n.startswith("worker-predictions-batch")]
    assert workers == [
        "worker-predictions-batch-1"
    ]  # the reload applied 1, not the 2 it would have read before
