"""workers.restart_delay on a real supervisord: a worker whose start keeps failing is started again after
the delay, for ever (a compute node's Restart=always, RestartSec=30), while a refused start (exit 78) and a
worker the operator stopped are left down."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, stack_file, wait_for

pytestmark = pytest.mark.integration

# Fails at once until a file OK exists in its directory; then works until stopped.
FLAKY = "{python} -P -c \"import pathlib, sys, time; pathlib.Path('OK').exists() or sys.exit(1); time.sleep(600)\""
# Never starts: the witness that the reviver keeps going round while the others are left alone.
BROKEN = '{python} -P -c "import sys; sys.exit(1)"'
# Always says its configuration is wrong, after its startsecs (exit 78 from a RUNNING process).
MISCONFIGURED = '{python} -P -c "import sys, time; time.sleep(3); sys.exit(78)"'


def supervisord_log(stack: Stack) -> list[str]:
    return (stack.root / "run" / "supervisord.log").read_text().splitlines()


def revived(stack: Stack, program: str) -> int:
    """How often the extension started the worker again."""
    return sum(1 for line in supervisord_log(stack) if f"started {program}:{program} again" in line)


def spawns(stack: Stack, program: str) -> int:
    log = (stack.root / "run" / "supervisord.log").read_text()
    return len(re.findall(rf"spawned: '{re.escape(program)}'", log))


@pytest.mark.slow
def test_a_failing_worker_is_started_again_after_the_delay_and_a_refused_one_is_not(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    queues = {
        "protea.flaky": {"processes": 1, "command": FLAKY},
        "protea.misconfigured": {"processes": 1, "command": MISCONFIGURED},
        "protea.broken": {"processes": 1, "command": BROKEN},
        "protea.ping": {"processes": 1},
    }
    stack = Stack(
        stack_file(short_tmp, queues=queues, extra={"workers": {"restart_delay": 1, "startsecs": 1}})
    )
    supervisord(stack)
    assert "revive_delay = 1" in stack.conf.read_text()
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf)]
    for program in ("worker-flaky", "worker-misconfigured", "worker-broken", "worker-ping"):
        subprocess.run([*ctl, "start", program], capture_output=True)
    # The flaky worker goes FATAL after supervisord's retries (or EXITED, when a loaded machine lets it pass
    # its startsecs before it fails), and is started again, round after round.
    wait_for(lambda: stack.status()["worker-flaky"]["state"] in ("FATAL", "EXITED"), 30, "worker-flaky down")
    wait_for(lambda: revived(stack, "worker-flaky") >= 2, 60, "worker-flaky started again twice")
    # Its cause fixed, it runs at the next round.
    (short_tmp / "OK").write_text("")
    wait_for(lambda: stack.status()["worker-flaky"]["state"] == "RUNNING", 60, "worker-flaky running")
    # Exit 78 is final: the misconfigured worker stays EXITED, spawned once, across several TICK_5s.
    wait_for(lambda: stack.status()["worker-misconfigured"]["state"] == "EXITED", 30, "exit 78")
    # The operator's stop is final too.
    subprocess.run([*ctl, "stop", "worker-ping"], capture_output=True)
    # While the broken worker is started again twice more (two more rounds of the reviver), neither the
    # refused nor the stopped worker is.
    broken = revived(stack, "worker-broken")
    wait_for(lambda: revived(stack, "worker-broken") >= broken + 2, 60, "two more rounds of the reviver")
    assert stack.status()["worker-misconfigured"]["state"] == "EXITED"
    assert stack.status()["worker-ping"]["state"] == "STOPPED"
    assert spawns(stack, "worker-misconfigured") == 1 and spawns(stack, "worker-ping") == 1
