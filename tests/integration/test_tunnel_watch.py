"""The tunnel watchdog on a real supervisord, against a tunnel stand-in told to fail as ngrok does."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, stack_file, wait_for

pytestmark = pytest.mark.integration
FAST = {
    "tunnel_watch": {
        "probe_interval": 1,
        "probe_timeout": 1,
        "failures": 3,
        "confirm_interval": 0.5,
        "grace": 2,
        "backoff_initial": 1,
        "backoff_max": 4,
        "max_restarts_per_hour": 6,
    }
}


def watch(stack: Stack) -> dict[str, Any]:
    path = stack.root / "run" / "tunnel-watch.json"
    return json.loads(path.read_text()) if path.exists() else {}


def tunnel_pid(stack: Stack) -> int:
    return int(stack.status()["tunnel"]["pid"])


def healthy_probe_after(stack: Stack, moment: float) -> bool:
    doc = watch(stack)
    return bool(doc.get("last_ok")) and doc.get("last_probe_at", 0) > moment


def bring_up(short_tmp: Path, supervisord: Callable[[Stack], None], **extra: Any) -> Stack:
    stack = Stack(stack_file(short_tmp, extra={**FAST, **extra}))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 0, up.both
    wait_for(lambda: healthy_probe_after(stack, 0), 30, "a first healthy probe")
    return stack


@pytest.mark.slow
@pytest.mark.parametrize("failure", ["hang", "exit", "5xx", "drop"])
def test_each_ngrok_failure_is_restarted(
    short_tmp: Path, supervisord: Callable[[Stack], None], failure: str
) -> None:
    stack = bring_up(short_tmp, supervisord)
    before = tunnel_pid(stack)
    (stack.root / "tunnel-control").write_text(failure)
    wait_for(lambda: tunnel_pid(stack) not in (0, before), 40, f"a new tunnel process after {failure}")
    restarted_at = watch(stack)["restarts"][-1]
    wait_for(lambda: healthy_probe_after(stack, restarted_at), 30, "the new tunnel to serve")
    doc = watch(stack)
    assert len(doc["restarts"]) == 1 and not doc["capped"]
    log = (stack.logs / "tunnel-watch.log").read_text()
    assert "restarting the tunnel" in log
    status = stack.ps("status")
    assert "tunnel watch: last probe ok" in status.out and "1 restarts in the last hour" in status.out


@pytest.mark.slow
def test_a_flapping_tunnel_spends_the_hourly_budget_then_is_left_alone_until_reset(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    budget = {**FAST["tunnel_watch"], "max_restarts_per_hour": 2}
    stack = bring_up(short_tmp, supervisord, tunnel_watch=budget)
    (stack.root / "tunnel-control").write_text("sticky-hang")
    wait_for(lambda: watch(stack).get("capped"), 90, "the restart budget to be spent")
    pid = tunnel_pid(stack)
    probed = watch(stack)["last_probe_at"]
    # It keeps probing (three more failed probes) and never restarts.
    for _ in range(3):
        wait_for(lambda since=probed: watch(stack)["last_probe_at"] > since, 30, "another probe")
        probed = watch(stack)["last_probe_at"]
    assert tunnel_pid(stack) == pid and len(watch(stack)["restarts"]) == 2
    assert "RESTART BUDGET SPENT" in (stack.logs / "tunnel-watch.log").read_text()
    assert "RESTART BUDGET SPENT" in stack.ps("status").out
    (stack.root / "tunnel-control").write_text("hang")  # the next process will be healthy
    assert stack.ps("tunnel", "reset").code == 0
    wait_for(lambda: tunnel_pid(stack) not in (0, pid), 40, "a restart after the reset")
    wait_for(lambda: healthy_probe_after(stack, watch(stack)["restarts"][-1]), 30, "the tunnel to serve")


@pytest.mark.slow
def test_a_healthy_tunnel_is_never_restarted_over_a_run_of_ticks(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = bring_up(short_tmp, supervisord)
    pid = tunnel_pid(stack)
    probed = [watch(stack)["last_probe_at"]]
    for _ in range(5):
        wait_for(lambda since=probed[-1]: watch(stack)["last_probe_at"] > since, 30, "the next probe")
        probed.append(watch(stack)["last_probe_at"])
        assert watch(stack)["last_ok"] is True
    assert tunnel_pid(stack) == pid and watch(stack)["restarts"] == []
    # The probes keep the stack's 1 s interval, on the watchdog's own clock: paced by supervisord's TICK_5,
    # they would come 5 s apart.
    gaps = [later - earlier for earlier, later in itertools.pairwise(probed)]
    assert max(gaps) < 2.5, gaps


def test_a_tunnel_stopped_by_hand_stays_stopped(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    import subprocess

    from conftest import BIN

    stack = bring_up(short_tmp, supervisord)
    subprocess.run([str(BIN / "supervisorctl"), "-c", str(stack.conf), "stop", "tunnel"], check=True,
                   capture_output=True)  # fmt: skip
    wait_for(lambda: watch(stack).get("armed") is False or "not watching" in
             (stack.logs / "tunnel-watch.log").read_text(), 20, "the watchdog to stand down")  # fmt: skip
    assert stack.status()["tunnel"]["state"] == "STOPPED"
    assert watch(stack)["restarts"] == []
