"""The deploy-timer listener on a real supervisord: triggers, the ls-remote check, the retry ladder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, wait_for
from deploy_app import AppRepo, deploy_stack, serving
from protea_supervisor.listeners.deploy_timer import marker_text, trigger_message

pytestmark = pytest.mark.integration
SEND = (
    "import sys, xmlrpc.client\n"
    "from supervisor.xmlrpc import SupervisorTransport\n"
    "t = SupervisorTransport(None, None, serverurl='unix://' + sys.argv[1])\n"
    "p = xmlrpc.client.ServerProxy('http://127.0.0.1', transport=t)\n"
    "p.supervisor.sendRemoteCommEvent('protea-deploy-timer', sys.argv[2])\n"
)


def timer_log(stack: Stack) -> str:
    return stack.log("deploy-timer")


def timer_running(stack: Stack) -> bool:
    """The listener has logged its start and supervisord counts it RUNNING (past its startsecs): only then
    does `trigger` send its event instead of leaving the marker for later (CI saw STARTING once)."""
    return (
        "polling every" in timer_log(stack)
        and stack.status().get("deploy-timer", {}).get("state") == "RUNNING"
    )


def ticks(stack: Stack, code: int) -> int:
    return stack.log("deploy-tick").count(f"tick exit={code} ")


@pytest.mark.slow
def test_an_xmlrpc_trigger_starts_a_tick_in_seconds_and_a_new_commit_is_picked_up(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    timer = {"deploy": {"enabled": True, "poll_interval": 3600, "check_interval": 5}}
    stack = deploy_stack(short_tmp, repo, queue_name, extra=timer)
    supervisord(stack)
    wait_for(lambda: "polling every 3600 s" in timer_log(stack), 20, "the timer listener")
    socket = str(stack.root / "run" / "supervisor.sock")
    message = '{"kind": "trigger", "trigger": "manual", "reason": "from another tool"}'
    subprocess.run([sys.executable, "-c", SEND, socket, message], check=True)
    wait_for(lambda: "tick scheduled: trigger:manual" in timer_log(stack), 5, "the tick to be scheduled")
    wait_for(lambda: ticks(stack, 10) == 1, 90, "the first deploy")
    wait_for(lambda: "tick exit=10 redeployed" in timer_log(stack), 10, "the timer to read the exit code")
    assert serving(stack).startswith("v1 ")

    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    wait_for(lambda: ticks(stack, 10) == 2, 90, "the new commit to be deployed")
    assert serving(stack) == f"v2 {rev2}"
    assert "tick scheduled: trigger:new-commit" in timer_log(stack)
    status = stack.ps("status")
    assert "next tick" in status.out and f"deployed {rev2[:10]}" in status.out, status.out

    # `trigger` writes its marker, then sends its event: a TICK_5 between the two takes the marker first, and
    # the event that follows is the same trigger (same id), not a second one (CI once saw two ticks).
    scheduled = timer_log(stack).count("tick scheduled: trigger:manual")
    marker = stack.root / "run" / "deploy-trigger"
    marker.write_text(marker_text("raced", "abc123"))
    wait_for(lambda: not marker.exists(), 10, "a TICK_5 to take the marker")
    subprocess.run(
        [sys.executable, "-c", SEND, socket, trigger_message("raced", trigger_id="abc123")], check=True
    )
    wait_for(lambda: "abc123 was already taken" in timer_log(stack), 10, "the event to be known as taken")
    log = timer_log(stack)
    assert log.count("tick scheduled: trigger:manual") == scheduled + 1
    assert "the trigger waits for it" not in log  # nothing pending behind the one tick


def test_failing_ticks_run_the_ladder_then_escalate_once_even_across_a_listener_kill(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    host = short_tmp / "host"
    timer = {
        "deploy": {
            "enabled": True,
            "remote": "nowhere",  # every fetch fails: exit 30
            "poll_interval": 3600,
            "check_interval": 0,
            "retry_ladder": [1, 1],
            "pause_after_escalation": 1800,
            "escalation_command": f'echo "$FAIL_KIND $FAIL_EXIT" >> {host}/escalations.log',
        }
    }
    stack = deploy_stack(short_tmp, repo, queue_name, extra=timer)
    supervisord(stack)
    wait_for(lambda: timer_running(stack), 20, "the timer listener")
    trigger = stack.ps("trigger", "first", "try")
    assert trigger.code == 0 and "triggered: first try" in trigger.out
    wait_for(lambda: ticks(stack, 30) == 2, 60, "two failing ticks")
    # Killed mid-ladder: supervisord restarts it, and it carries on from its state file.
    listener = stack.status()["deploy-timer"]["pid"]
    os.kill(listener, signal.SIGKILL)
    # `echo >> file` creates the file before it writes the line: wait for the line.
    escalations = host / "escalations.log"
    wait_for(lambda: escalations.exists() and escalations.read_text().endswith("\n"), 60, "the escalation")
    assert escalations.read_text() == "fetch 30\n"
    assert ticks(stack, 30) == 3
    assert stack.status()["deploy-timer"]["pid"] != listener
    log = timer_log(stack)
    assert log.count("retry in 1s") == 2 and log.count("escalated") == 1 and "paused until" in log
    # Paused, with no retry pending: the unit tests show that nothing starts until the pause ends.
    state = json.loads((host / "run" / "deploy-timer.json").read_text())
    assert state["retry_at"] == 0 and state["paused_until"] > time.time() + 1700 and not state["running"]
    assert ticks(stack, 30) == 3


@pytest.mark.slow
def test_prerequisite_failures_retry_with_backoff_and_never_escalate(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    host = short_tmp / "host"
    closed = free_port()
    timer = {
        "deploy": {
            "enabled": True,
            "poll_interval": 3600,
            "check_interval": 0,
            "retry_ladder": [1, 1],
            "prerequisite_timeout": 1,
            "escalation_command": f"echo escalated >> {host}/escalations.log",
        }
    }
    stack = deploy_stack(
        short_tmp, repo, queue_name, db_url=f"postgresql://postgres@127.0.0.1:{closed}/x", extra=timer
    )
    supervisord(stack)
    wait_for(lambda: timer_running(stack), 20, "the timer listener")
    assert stack.ps("trigger").code == 0
    # Twice the ladder's length plus one: a deploy failure would have escalated by now.
    wait_for(lambda: ticks(stack, 40) >= 4, 90, "four ticks with the database down")
    wait_for(lambda: timer_log(stack).count("tick exit=40 ") >= 4, 10, "the timer to read them")
    assert not (host / "escalations.log").exists()
    assert "escalated" not in timer_log(stack) and "retry in 1s" in timer_log(stack)
