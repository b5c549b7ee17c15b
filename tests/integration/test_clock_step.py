"""The wall clock stepped under a running stack. The stack's supervisord, its listeners, programs and ticks
read their wall clock shifted by an offset in a file (tests/clockshift/sitecustomize.py, on their PYTHONPATH,
read at most every 0.2 s): writing the file steps it, back or forward, as NTP correcting a drift, an
operator's `date -s` or a VM restored would, and leaves their monotonic clock and every other process on this
machine alone.

What the guides claim, checked on the real listeners: after a step back the deploy timer still polls every
interval and the tunnel watchdog still probes (each said once in its log: left alone, an hour back stopped
both for an hour); after a step forward what fell due runs once, not once per interval skipped; the tunnel
is not restarted for either; and `status` still says what supervisorctl says."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Clock, Stack, wait_for
from deploy_app import AppRepo, deploy_stack

from protea_supervisor.supervisord.control import Supervisor

pytestmark = pytest.mark.integration

POLL = 5  # the deploy timer's poll interval (s), no jitter
PROBE = 1  # the tunnel watchdog's probe interval (s)


def ticks(stack: Stack) -> int:
    return len(re.findall(r"tick exit=\d+ ", stack.log("deploy-tick")))


def watch(stack: Stack) -> dict[str, Any]:
    path = stack.root / "run" / "tunnel-watch.json"
    return json.loads(path.read_text()) if path.exists() else {}


def same_as_supervisorctl(stack: Stack) -> None:
    status = stack.ps("status", "--json")
    assert status.code == 0, status.both
    reported = {p["name"]: p["state"] for p in json.loads(status.out)["processes"]}
    infos = Supervisor(stack.root / "run" / "supervisor.sock").all_process_info()
    assert reported == {i["name"]: i["statename"] for i in infos}


@pytest.fixture
def stepped(short_tmp: Path, queue_name: str) -> Iterator[tuple[Stack, Clock]]:
    repo = AppRepo(short_tmp)
    extra = {
        "deploy": {"enabled": True, "poll_interval": POLL, "jitter": 0, "check_interval": 3600},
        "tunnel_watch": {"probe_interval": PROBE, "probe_timeout": 1, "failures": 3, "grace": 2},
    }
    stack = deploy_stack(short_tmp, repo, queue_name, extra=extra)
    clock = Clock(short_tmp)
    try:
        up = stack.ps("up", env=clock.environ(), timeout=180)
        assert up.code == 0, up.both
        yield stack, clock
    finally:
        stack.ps("down", "--force", timeout=180)


@pytest.mark.slow
def test_a_wall_clock_stepped_back_or_forward_keeps_every_schedule(stepped: tuple[Stack, Clock]) -> None:
    stack, clock = stepped
    wait_for(lambda: ticks(stack) >= 1, 3 * POLL + 60, "the timer's first poll")
    wait_for(lambda: watch(stack).get("last_ok") is True, 30, "the watchdog's first good probe")
    tunnel = stack.status()["tunnel"]["pid"]

    # An hour back: the timer polls again within an interval (and a TICK_5), the watchdog probes again.
    before, probed = ticks(stack), watch(stack)["last_probe_at"]
    clock.step(-3600)
    wait_for(lambda: ticks(stack) >= before + 2, 2 * POLL + 30, "two polls after the clock stepped back")
    wait_for(
        lambda: watch(stack)["last_probe_at"] < probed - 3000, 30, "a probe after the clock stepped back"
    )
    for listener in ("deploy-timer", "tunnel-watch"):
        # Said once, or in two parts when a TICK_5 stamped before the step came after an event stamped after
        # it (as it can on a real machine): its deadlines moved by the hour, give or take the seconds of an
        # event's stamp (a TICK_5's `when` is whole seconds) and of the processes reading the step apart.
        said = [int(by) for by in re.findall(r"the wall clock stepped back (\d+) s", stack.log(listener))]
        assert said and abs(sum(said) - 3600) <= 10, stack.log(listener)[-2000:]
    same_as_supervisorctl(stack)

    # Two hours forward (an hour past where it started): the polls that fell due run once, then the timer
    # keeps its interval: a handful of ticks until two more came, never one per skipped interval (1440).
    before = ticks(stack)
    clock.step(7200)
    wait_for(lambda: ticks(stack) >= before + 1, POLL + 30, "a poll after the clock jumped forward")
    after_jump = ticks(stack)
    probed = watch(stack)["last_probe_at"]
    wait_for(lambda: watch(stack)["last_probe_at"] > probed, 30, "a probe after the clock jumped forward")
    wait_for(lambda: ticks(stack) >= after_jump + 2, 3 * POLL + 30, "the timer's interval after the jump")
    assert ticks(stack) - before <= 5, stack.log("deploy-tick")[-3000:]

    # Neither step is an outage: the tunnel was never restarted, and status says what supervisorctl says.
    assert watch(stack)["last_ok"] is True and not watch(stack)["restarts"], watch(stack)
    assert stack.status()["tunnel"]["pid"] == tunnel
    same_as_supervisorctl(stack)
