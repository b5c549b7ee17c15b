"""`scale` and `reload` on a real supervisord, with stand-in workers consuming a real RabbitMQ queue."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, stack_file, wait_for
from rabbit import WORKER_COMMAND, publish

pytestmark = pytest.mark.integration


def rabbit_stack(root: Path, queue: str, processes: int = 1, **queue_settings: object) -> Stack:
    settings = {"processes": processes, "numbered": True, "command": WORKER_COMMAND, "stop_grace": 30}
    return Stack(stack_file(root, queues={queue: settings | queue_settings}))


def pids(stack: Stack, program: str) -> dict[str, int]:
    return {name: p["pid"] for name, p in stack.status().items() if name.startswith(f"{program}-")}


def reread(stack: Stack) -> str:
    result = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(stack.conf), "reread"], capture_output=True, text=True
    )
    return result.stdout.strip()


def acks(stack: Stack) -> list[int]:
    path = stack.root / "acks.log"
    return [int(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def started_jobs(stack: Stack, process: str) -> int:
    return stack.log(process).count(" started")


@pytest.mark.slow
def test_scale_1_4_2_3_with_jobs_in_flight_keeps_untouched_workers_and_every_job_once(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    stack = rabbit_stack(short_tmp, queue_name)
    program = "worker-" + queue_name.replace(".", "-")
    jobs = 30
    publish(queue_name, jobs, seconds=1.5)
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 0, up.both
    first = pids(stack, program)
    assert list(first) == [f"{program}-1"]

    # 1 -> 4: three workers join; worker-1 is not touched.
    out = stack.ps("scale", queue_name, "4")
    assert out.code == 0, out.both
    assert f"added {program}-2, {program}-3, {program}-4 and running" in out.out
    assert reread(stack) == "No config updates to processes"
    wait_for(lambda: all(started_jobs(stack, f"{program}-{n}") for n in (2, 3, 4)), 30, "new workers busy")
    four = pids(stack, program)
    assert four[f"{program}-1"] == first[f"{program}-1"] and len(four) == 4

    # 4 -> 2 (relative): the two newest finish the job in hand, then go; 1 and 2 keep running.
    out = stack.ps("scale", program, "-2")
    assert out.code == 0, out.both
    assert f"stopping {program}-3, {program}-4" in out.out and "finished and removed" in out.out
    assert reread(stack) == "No config updates to processes"
    two = pids(stack, program)
    assert two == {n: four[n] for n in (f"{program}-1", f"{program}-2")}
    for removed in (3, 4):
        log = stack.log(f"{program}-{removed}")
        assert "done after TERM" in log and log.rstrip().endswith("stopped"), log

    # 2 -> 3 (relative, manage.sh's "add 1"): a fresh worker-3 joins.
    out = stack.ps("scale", queue_name, "+1")
    assert out.code == 0, out.both
    assert reread(stack) == "No config updates to processes"
    three = pids(stack, program)
    assert {n: three[n] for n in two} == two and three[f"{program}-3"] not in (0, four[f"{program}-3"])

    # Every job is acked exactly once: none lost to a scale step, none run twice.
    wait_for(lambda: len(acks(stack)) >= jobs, 120, "all jobs acked")
    counted = collections.Counter(acks(stack))
    assert sorted(counted) == list(range(jobs)) and set(counted.values()) == {1}, counted
    assert pids(stack, program) == three
    # The count is recorded: a later render keeps three.
    assert json.loads((stack.root / "run" / "overrides.json").read_text())["processes"][program] == 3
    assert "numprocs=3" in stack.conf.read_text()


def test_reload_restarts_only_the_worker_whose_command_changed(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    other = f"{queue_name}.other"
    stack = rabbit_stack(short_tmp, queue_name, processes=2)
    text = stack.file.read_text()
    # A second queue beside it, which must not move.
    stack.file.write_text(
        text + f'\n[queues."{other}"]\nprocesses = 1\nnumbered = true\ncommand = "{WORKER_COMMAND}"\n'
    )
    supervisord(stack)
    assert stack.ps("up").code == 0
    program, other_program = (
        "worker-" + queue_name.replace(".", "-"),
        "worker-" + other.replace(".", "-"),
    )
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}

    # Change only the first queue's command: one more argument (the same broker, spelled out).
    lines = stack.file.read_text().splitlines()
    section = lines.index(f'[queues."{queue_name}"]')
    for i in range(section + 1, len(lines)):
        if lines[i].startswith("command = "):
            lines[i] = lines[i][:-1] + ' --url amqp://guest:guest@127.0.0.1:5672/"'
            break
    stack.file.write_text("\n".join(lines) + "\n")

    dry = stack.ps("reload", "--dry-run")
    assert dry.code == 0, dry.both
    assert f"restart  {program}" in dry.out and other_program not in dry.out
    assert {n: p["pid"] for n, p in stack.status().items() if p["pid"]} == before  # a dry run changes nothing

    out = stack.ps("reload")
    assert out.code == 0, out.both
    after = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}
    moved = {n for n in before if after.get(n) != before[n]}
    assert moved == {f"{program}-1", f"{program}-2"}, (moved, out.out)
    assert reread(stack) == "No config updates to processes"
    again = stack.ps("reload")
    assert "nothing to do" in again.out


def test_scale_refuses_unknown_names_bad_counts_and_scale_down_during_an_export(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    stack = rabbit_stack(short_tmp, queue_name, processes=2)
    supervisord(stack)
    assert stack.ps("up").code == 0
    program = "worker-" + queue_name.replace(".", "-")
    assert stack.ps("scale", "protea.nope", "2").code == 1
    bad = stack.ps("scale", queue_name, "-5")
    assert bad.code == 1 and "would leave -3" in bad.err
    assert stack.ps("lock", "acquire", "export", "exp-7", "nightly export").code == 0
    refused = stack.ps("scale", queue_name, "1")
    assert refused.code == 2 and "exp-7" in refused.err
    assert len(pids(stack, program)) == 2
    assert stack.ps("reload").code == 2
    grown = stack.ps("scale", queue_name, "3")  # growing never interrupts anything
    assert grown.code == 0, grown.both
    # The extension refuses a group that is not a worker group, with a clear fault.
    ctl = subprocess.run(
        [sys.executable, "-c", "import sys, xmlrpc.client\n"
         "from supervisor.xmlrpc import SupervisorTransport\n"
         f"t = SupervisorTransport(None, None, serverurl='unix://{stack.root / 'run' / 'supervisor.sock'}')\n"
         "p = xmlrpc.client.ServerProxy('http://127.0.0.1', transport=t)\n"
         "try:\n    p.protea.syncGroup('api')\nexcept xmlrpc.client.Fault as f:\n    print(f.faultString)\n"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert "not a worker group" in ctl.stdout, ctl.stdout + ctl.stderr


def test_an_unnumbered_queue_grows_only_with_yes_and_its_worker_restarts_once_renamed(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.ping": {}}, job_seconds=0.5))
    supervisord(stack)
    assert stack.ps("up").code == 0
    refused = stack.ps("scale", "protea.ping", "2")
    assert refused.code == 1 and "--yes" in refused.err and "worker-ping-1..2" in refused.err
    assert "worker-ping" in stack.status()
    grown = stack.ps("scale", "worker-ping", "2", "--yes")
    assert grown.code == 0, grown.both
    status = stack.status()
    assert "worker-ping" not in status
    assert status["worker-ping-1"]["state"] == status["worker-ping-2"]["state"] == "RUNNING"
    assert "Worker stopped. queue=protea.ping" in stack.log("worker-ping")  # it finished, not killed
    assert reread(stack) == "No config updates to processes"
    # From now on the queue is numbered: the next step is in place.
    kept = status["worker-ping-1"]["pid"]
    assert stack.ps("scale", "protea.ping", "+1").code == 0
    assert stack.status()["worker-ping-1"]["pid"] == kept


def test_a_queue_scaled_from_and_to_zero_is_added_and_removed_and_the_listeners_follow(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.ping": {}}, job_seconds=0.5))
    supervisord(stack)
    assert stack.ps("up").code == 0
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}
    out = stack.ps("scale", "protea.jobs", "1")
    assert out.code == 0, out.both
    status = stack.status()
    assert status["worker-jobs"]["state"] == "RUNNING"
    # Nothing else moves, not even a listener: the gate plans each run from supervisord's live groups.
    moved = {n for n, pid in before.items() if status[n]["pid"] != pid}
    assert moved == set(), out.out
    assert reread(stack) == "No config updates to processes"
    # The gate, started before the queue was, starts its worker in the next run.
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf), "stop", "worker-jobs"]
    assert subprocess.run(ctl, capture_output=True, text=True).returncode == 0
    retried = stack.ps("gate", "retry")
    assert retried.code == 0, retried.both
    assert stack.status()["worker-jobs"]["state"] == "RUNNING"
    assert stack.status()["gate"]["pid"] == before["gate"]
    out = stack.ps("scale", "worker-jobs", "0")
    assert out.code == 0, out.both
    assert "worker-jobs" not in stack.status() and "stopped and removed" in out.out
    assert reread(stack) == "No config updates to processes"


def test_reload_after_a_listener_setting_changes_restarts_the_listeners_only(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.ping": {}}, job_seconds=0.5))
    supervisord(stack)
    assert stack.ps("up").code == 0
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}
    stack.file.write_text(stack.file.read_text() + "\n[tunnel_watch]\nprobe_interval = 20\n")
    out = stack.ps("reload")
    assert out.code == 0, out.both
    after = stack.status()
    assert {n for n, pid in before.items() if after[n]["pid"] != pid} == {"gate", "tunnel-watch"}
    assert all(after[n]["state"] == "RUNNING" for n in ("gate", "tunnel-watch"))
