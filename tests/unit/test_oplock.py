"""The host's operation lock: one change at a time, a holder that can be named, a bound on the wait."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from protea_supervisor.errors import OperationBusy, UsageError
from protea_supervisor.locks.operation import attempt, operation, read_holder, resolve_wait
from protea_supervisor.progress import Ticker, names

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from protea_supervisor.locks.operation import operation
    with operation(Path(sys.argv[1]), "tick", 5, print, spares=("tunnel",)):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def holder_process(run: Path, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_holder_waits_naming_the_first_then_gives_up_at_the_bound(tmp_path: Path) -> None:
    child = holder_process(tmp_path, 30)
    try:
        holder = read_holder(tmp_path)
        assert holder is not None and holder.command == "tick" and holder.pid == child.pid
        lines: list[str] = []
        began = time.monotonic()
        with pytest.raises(OperationBusy) as caught, operation(tmp_path, "down", 2.5, lines.append):
            pass
        assert 2.5 <= time.monotonic() - began < 10
        assert f"`tick` (pid {child.pid})" in str(caught.value) and "--lock-wait" in str(caught.value)
        assert len(lines) >= 2 and all(f"`tick` (pid {child.pid})" in line for line in lines)
    finally:
        child.kill()
        child.wait()


def test_a_killed_holder_frees_the_host_at_once(tmp_path: Path) -> None:
    child = holder_process(tmp_path, 30)
    child.kill()
    child.wait()
    assert read_holder(tmp_path) is None
    with operation(tmp_path, "up", 0, print):
        assert read_holder(tmp_path) is not None
    assert read_holder(tmp_path) is None


def test_nested_use_in_one_process_does_not_wait_for_itself(tmp_path: Path) -> None:
    with operation(tmp_path, "tick", 0, print), operation(tmp_path, "gate retry", 0, print):
        holder = read_holder(tmp_path)
        assert holder is not None and holder.command == "tick"


def test_a_listener_may_act_only_when_free_or_spared(tmp_path: Path) -> None:
    with attempt(tmp_path, "tunnel-watch", "tunnel") as busy:
        assert busy is None
    child = holder_process(tmp_path, 30)
    try:
        with attempt(tmp_path, "tunnel-watch", "tunnel") as busy:
            assert busy is None  # the tick spares the tunnel
        with attempt(tmp_path, "gate", "workers") as busy:
            assert busy is not None and busy.command == "tick"
    finally:
        child.kill()
        child.wait()


def test_the_wait_bound_must_be_finite() -> None:
    assert resolve_wait(None, {}, 900) == 900
    assert resolve_wait(None, {"PROTEA_LOCK_WAIT": "12"}, 900) == 12
    assert resolve_wait(3, {"PROTEA_LOCK_WAIT": "12"}, 900) == 3
    for bad in ("nan", "inf", "-1", "soon"):
        with pytest.raises(UsageError):
            resolve_wait(None, {"PROTEA_LOCK_WAIT": bad}, 900)
    with pytest.raises(UsageError):
        resolve_wait(math.inf, {}, 900)


def test_progress_lines_come_on_change_and_at_least_every_two_seconds() -> None:
    now = [0.0]
    said: list[str] = []
    ticker = Ticker(said.append, clock=lambda: now[0])
    for t, line in [(0, "a"), (0.5, "a"), (1.9, "a"), (2.0, "a"), (2.1, "b"), (3.0, "b"), (4.2, "b")]:
        now[0] = t
        ticker.say(line)
    assert said == ["a (0 s)", "a (2 s)", "b (2 s)", "b (4 s)"]
    assert names([f"w-{n}" for n in range(500)]) == "w-0, w-1, w-2, w-3, w-4, w-5 and 494 more"
