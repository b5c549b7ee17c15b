"""The readiness gate on a real supervisord: order, failures, infra ports, and a listener killed mid-gate."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, Stack, free_port, stack_file, wait_for

pytestmark = pytest.mark.integration
SPAWNED = re.compile(r"^(\S+ \S+) INFO spawned: '([^']+)' with pid", re.MULTILINE)
EXITED = re.compile(r"^(\S+ \S+) INFO exited: (\S+) \(exit status (\d+)", re.MULTILINE)
RUNNING = re.compile(r"^(\S+ \S+) INFO success: (\S+) entered RUNNING state", re.MULTILINE)


def when(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def supervisord_log(stack: Stack) -> str:
    return (stack.root / "run" / "supervisord.log").read_text()


def spawns(stack: Stack) -> dict[str, list[float]]:
    """When supervisord spawned each process, from its own log (millisecond stamps)."""
    found: dict[str, list[float]] = {}
    for stamp, name in SPAWNED.findall(supervisord_log(stack)):
        found.setdefault(name, []).append(when(stamp))
    return found


def gate_doc(stack: Stack) -> dict[str, Any]:
    path = stack.root / "run" / "gate.json"
    return json.loads(path.read_text()) if path.exists() else {}


def env_file(root: Path, text: str) -> str:
    path = root / "protea.env"
    path.write_text(text)
    path.chmod(0o600)
    return str(path)


def test_each_program_starts_only_after_its_predecessor_is_ready(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    ready_after = 1.5
    extra = {
        "programs": {"web": {"command": "{python} -P -m protea_supervisor.demo.web --ready-after 1.5"}},
        "workers": {"startsecs": 5},
    }
    stack = Stack(stack_file(short_tmp, api_ready_after=ready_after, extra=extra))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 0, up.both
    assert [line.split()[0] for line in up.out.splitlines() if line.startswith("  ") and "ready in" in line] == [
        "migrate", "api", "web", "tunnel", "workers",
    ]  # fmt: skip
    assert "the public chain (infra, migrate, api, web, tunnel) took" in up.out and "overhead" in up.out
    started = {name: times[0] for name, times in spawns(stack).items()}
    (migrate_exit,) = [
        when(stamp) for stamp, name, code in EXITED.findall(supervisord_log(stack)) if name == "migrate"
    ]
    assert started["migrate"] < migrate_exit <= started["api"]
    # The API answers its readiness URL only `ready_after` seconds after it started.
    for worker in ("worker-ping", "worker-jobs", "web"):
        assert started[worker] >= started["api"] + ready_after, worker
    assert started["tunnel"] >= started["web"] + ready_after
    # The public chain first: the workers start once the tunnel runs, so neither their start-up nor their
    # 5 s startsecs delays it; their readiness is reported last.
    (tunnel_running,) = [
        when(stamp) for stamp, name in RUNNING.findall(supervisord_log(stack)) if name == "tunnel"
    ]
    assert tunnel_running <= min(started["worker-ping"], started["worker-jobs"])
    assert all(len(times) == 1 for times in spawns(stack).values())  # nothing was started twice
    doc = gate_doc(stack)
    assert doc["phase"] == "done" and [s["step"] for s in doc["steps"]] == [
        "migrate", "api", "web", "tunnel", "workers",
    ]  # fmt: skip
    assert "gate: done" in stack.ps("status").out


def test_api_that_never_gets_ready_keeps_workers_stopped_and_says_why(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, api_ready_after=600, extra={"probes": {"api_ready_timeout": 2}}))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 7
    url = f"http://127.0.0.1:{stack.api_port}/jobs"
    assert f"gate failed at api: api did not answer {url} with 2xx within 2 s" in up.err
    status = stack.status()
    assert status["api"]["state"] == "RUNNING"  # the API itself is supervisord's business
    assert status["worker-ping"]["state"] == "STOPPED" and status["web"]["state"] == "STOPPED"
    assert "worker-ping" not in spawns(stack)
    assert "gate: failed at api" in stack.ps("status").out
    assert gate_doc(stack)["reason"].startswith("api did not answer")


def test_infra_port_closed_then_opened_within_the_deadline_proceeds(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    port = free_port()
    env = env_file(short_tmp, f"export TEST_DB_URL=postgresql://u:hunter2@127.0.0.1:{port}/db\n")
    extra = {"probes": {"infra_from_env": ["TEST_DB_URL"], "infra_timeout": 60}}
    stack = Stack(stack_file(short_tmp, env_files=[env], extra=extra))
    supervisord(stack)
    up = subprocess.Popen([PS, "--stack", str(stack.file), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    try:
        wait_for(lambda: gate_doc(stack).get("step") == "infra", 20, "the gate to wait on the port")
        assert "migrate" not in spawns(stack)
        with socket.create_server(("127.0.0.1", port)):
            out, err = up.communicate(timeout=60)
    finally:
        up.kill()
    assert up.returncode == 0, err
    assert re.search(r"infra\s+ready in", out)
    assert "hunter2" not in (stack.logs / "gate.log").read_text()
    assert f"127.0.0.1:{port}" in (stack.logs / "gate.log").read_text()


def test_infra_port_that_stays_closed_fails_the_gate_naming_it(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    port = free_port()
    env = env_file(short_tmp, f"TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:{port}/\n")
    extra = {"probes": {"infra_from_env": ["TEST_AMQP_URL"], "infra_timeout": 2}}
    stack = Stack(stack_file(short_tmp, env_files=[env], extra=extra))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 7
    assert (
        f"gate failed at infra: infrastructure port(s) 127.0.0.1:{port} (TEST_AMQP_URL) not accepting"
        in up.err
    )
    assert "migrate" not in spawns(stack)


def test_this_machines_postgres_and_rabbitmq_as_infra_targets(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    env = env_file(short_tmp, "PROTEA_DB_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres\n"
                              "PROTEA_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/\n")  # fmt: skip
    extra = {"probes": {"infra_from_env": ["PROTEA_DB_URL", "PROTEA_AMQP_URL"]}}
    stack = Stack(
        stack_file(short_tmp, env_files=[env], required=["PROTEA_DB_URL", "PROTEA_AMQP_URL"], extra=extra)
    )
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 0, up.both
    assert re.search(r"infra\s+ready in", up.out)
    log = (stack.logs / "gate.log").read_text()
    assert "127.0.0.1:5432" in log and "127.0.0.1:5672" in log


@pytest.mark.parametrize("step", ["infra", "migrate", "api", "web"])
def test_listener_killed_with_sigkill_mid_gate_ends_the_same(
    short_tmp: Path, supervisord: Callable[[Stack], None], step: str
) -> None:
    port = free_port()
    env = env_file(short_tmp, f"TEST_DB_URL=postgresql://u:p@127.0.0.1:{port}/db\n")
    extra = {
        "probes": {"infra_from_env": ["TEST_DB_URL"], "infra_timeout": 60},
        "programs": {
            "migrate": {"command": "{python} -P -m protea_supervisor.demo.migrate --seconds 3"},
            "web": {"command": "{python} -P -m protea_supervisor.demo.web --ready-after 3"},
        },
    }
    stack = Stack(stack_file(short_tmp, env_files=[env], api_ready_after=3, extra=extra))
    supervisord(stack)
    up = subprocess.Popen([PS, "--stack", str(stack.file), "up"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)  # fmt: skip
    port_server = None
    try:
        if step != "infra":
            port_server = socket.create_server(("127.0.0.1", port))
        wait_for(lambda: gate_doc(stack).get("step") == step, 30, f"the gate to reach {step}")
        old_pid = wait_for(lambda: stack.status()["gate"]["pid"], 20, "the gate listener's pid")
        assert isinstance(old_pid, int) and old_pid > 0  # never os.kill(0): that is our own process group
        os.kill(old_pid, signal.SIGKILL)
        wait_for(
            lambda: stack.status()["gate"]["pid"] not in (0, old_pid), 20, "supervisord to restart the gate"
        )
        if port_server is None:
            port_server = socket.create_server(("127.0.0.1", port))
        _, err = up.communicate(timeout=90)
    finally:
        up.kill()
        if port_server is not None:
            port_server.close()
    assert up.returncode == 0, err
    status = stack.status()
    for name in ("migrate", "api", "worker-ping", "worker-jobs", "web", "tunnel"):
        assert status[name]["state"] == ("EXITED" if name == "migrate" else "RUNNING"), name
    started = spawns(stack)
    assert all(len(started[name]) == 1 for name in started if name != "gate"), started
    assert len(started["gate"]) == 2
    assert gate_doc(stack)["phase"] == "done"


def test_gate_retry_runs_from_the_first_unsatisfied_step(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    flag, port = short_tmp / "api-may-start", free_port()
    api = f"sh -c 'test -e {flag} && exec {sys.executable} -P -m protea_supervisor.demo.api --port {port}'"
    stack = Stack(stack_file(short_tmp, api_port=port, extra={"programs": {"api": {"command": api}}}))
    supervisord(stack)
    failed = stack.ps("up")
    assert failed.code == 7 and "gate failed at api" in failed.err
    flag.touch()
    retried = stack.ps("gate", "retry")
    assert retried.code == 0, retried.both
    assert len(spawns(stack)["migrate"]) == 1  # the migration that passed is not run again
    assert stack.status()["worker-ping"]["state"] == "RUNNING"
