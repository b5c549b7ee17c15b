"""The lock CLI against real files, real processes and the real `flock` command."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protea_supervisor.errors import LockContention
from protea_supervisor.locks.stack_owner import LockFile, parse_record

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, ps, wait_for

# Exactly what stack_owner.sh writes (python3 json.dumps(..., indent=2, sort_keys=True) + newline).
SHELL_EXPORT = """{
  "acquired_at": "2026-05-20T14:00:00+00:00",
  "owner": "export",
  "reason": "FARM-EXP.13 24-cell sweep",
  "task_id": "farm-exp-13"
}
"""
SHELL_FREE_MISSING = """{
  "acquired_at": "",
  "owner": "free",
  "reason": "",
  "task_id": ""
}
"""


def hold_flock(path: Path) -> subprocess.Popen[bytes]:
    """The real flock(1) holding <file>.lock, as stack_owner.sh would while it works."""
    holder = subprocess.Popen(["flock", str(path) + ".lock", "sleep", "60"], start_new_session=True)
    wait_for(
        lambda: subprocess.run(["flock", "-n", str(path) + ".lock", "true"]).returncode == 1, 10, "flock held"
    )
    return holder


def release_flock(holder: subprocess.Popen[bytes]) -> None:
    os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which inherited the locked fd
    holder.wait()


def lock(path: Path, *args: str, timeout: str = "5") -> tuple[int, str, str]:
    result = ps("lock", "--file", str(path), "--timeout", timeout, *args)
    return result.code, result.out, result.err


def test_missing_file_reads_free(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    assert lock(path, "current") == (0, "free\n", "")
    assert lock(path, "status") == (0, SHELL_FREE_MISSING, "")
    assert not path.exists()


def test_acquire_release_exit_codes_and_file_format(tmp_path: Path) -> None:
    path = tmp_path / "state" / "stack-owner.json"
    assert lock(path, "acquire", "export", "farm-exp-13", "FARM-EXP.13 24-cell sweep")[0] == 0
    record = json.loads(path.read_text())
    assert path.read_text() == json.dumps(record, indent=2, sort_keys=True) + "\n"
    assert record["owner"] == "export" and record["task_id"] == "farm-exp-13"
    assert lock(path, "acquire", "export", "farm-exp-13", "again")[0] == 0  # idempotent
    assert json.loads(path.read_text()) == record
    code, _, err = lock(path, "acquire", "deploy", "deploy-tick", "tick")
    assert code == 2 and "farm-exp-13" in err and record["acquired_at"] in err
    code, _, err = lock(path, "release", "deploy-tick")
    assert code == 3 and "does not hold" in err
    assert lock(path, "release", "farm-exp-13")[0] == 0
    released = json.loads(path.read_text())
    assert (released["owner"], released["task_id"], released["reason"]) == (
        "free",
        "",
        "released by farm-exp-13",
    )
    assert lock(path, "release", "farm-exp-13")[0] == 0  # releasing a free lock is fine


@pytest.mark.parametrize(
    "args",
    [
        ["acquire"],
        ["acquire", "janitor", "t", "r"],
        ["release"],
        ["bogus"],
        ["acquire", "export", "t", "r", "extra"],
    ],
)
def test_bad_arguments_exit_1_not_clicks_2(tmp_path: Path, args: list[str]) -> None:
    code, out, err = lock(tmp_path / "l.json", *args)
    assert code == 1, (out, err)
    assert "Traceback" not in err and err.startswith("error: ")


def test_reads_and_honours_a_file_written_by_the_shell_tool(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    path.write_text(SHELL_EXPORT)
    assert lock(path, "current") == (0, "export\n", "")
    assert lock(path, "status") == (0, SHELL_EXPORT, "")
    assert lock(path, "acquire", "deploy", "deploy-keeper", "tick")[0] == 2
    assert lock(path, "acquire", "export", "farm-exp-13", "FARM-EXP.13 24-cell sweep")[0] == 0
    assert path.read_text() == SHELL_EXPORT  # idempotent acquire leaves the shell's bytes alone


def test_writes_what_the_shell_tool_writes(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    lock(path, "acquire", "export", "farm-exp-13", "FARM-EXP.13 24-cell sweep")
    ours = json.loads(path.read_text())
    expected = json.loads(SHELL_EXPORT) | {"acquired_at": ours["acquired_at"]}
    assert path.read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"


def test_environment_variables_of_the_shell_tool(tmp_path: Path) -> None:
    path = tmp_path / "from-env.json"
    result = ps("lock", "acquire", "export", "t1", "r", env={"STACK_OWNER_FILE": str(path)})
    assert result.code == 0 and json.loads(path.read_text())["task_id"] == "t1"
    holder = hold_flock(path)
    try:
        started = time.monotonic()
        result = ps(
            "lock", "release", "t1", env={"STACK_OWNER_FILE": str(path), "STACK_OWNER_FLOCK_TIMEOUT_SEC": "1"}
        )
        assert result.code == 4 and time.monotonic() - started < 5
    finally:
        release_flock(holder)


def test_flock_held_by_the_real_flock_command_gives_exit_4(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    holder = hold_flock(path)
    try:
        code, _, err = lock(path, "acquire", "export", "t", "r", timeout="1")
        assert code == 4
        assert "flock contention" in err and str(path) in err
    finally:
        release_flock(holder)
    assert lock(path, "acquire", "export", "t", "r", timeout="1")[0] == 0


def test_corrupt_file_is_reported_with_its_path_and_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    path.write_text('{"owner": "exp')
    for args in (["current"], ["status"], ["acquire", "deploy", "t", "r"], ["release", "t"]):
        code, _, err = lock(path, *args)
        assert code == 5 and str(path) in err and "Traceback" not in err
    assert path.read_text() == '{"owner": "exp'


def _race(
    path: str, task: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    barrier.wait()
    try:
        LockFile(Path(path), timeout=60).acquire("export", task, "race")
        results.put((task, 0))
    except LockContention:
        results.put((task, 2))


def test_racing_processes_end_with_exactly_one_holder_and_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    count = 120
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(count)
    results = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(str(path), f"task-{i}", barrier, results)) for i in range(count)]
    for proc in procs:
        proc.start()
    outcomes = dict(results.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(30)
    winners = [task for task, code in outcomes.items() if code == 0]
    assert len(outcomes) == count and len(winners) == 1
    assert parse_record(path.read_text(), path).task_id == winners[0]


def _churn(path: str) -> None:
    lock = LockFile(Path(path), timeout=60)
    while True:
        lock.acquire("export", "churn", "churning")
        lock.release("churn")


def test_writer_killed_with_sigkill_never_leaves_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(7)
    for _ in range(40):
        writer = ctx.Process(target=_churn, args=(str(path),))
        writer.start()
        wait_for(path.exists, 10, "the first write")
        time.sleep(rng.uniform(0, 0.03))  # the kill lands at a random point of the write loop
        os.kill(writer.pid or 0, signal.SIGKILL)
        writer.join()
        record = parse_record(path.read_text(), path)
        assert record.owner in ("free", "export")


def test_lock_run_holds_export_and_releases_after_success_and_failure(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    probe = f"import json,sys; sys.exit(0 if json.load(open({str(path)!r}))['owner'] == 'export' else 9)"
    assert lock(path, "run", "farm-exp-1", "sweep", "--", sys.executable, "-c", probe)[0] == 0
    assert json.loads(path.read_text())["owner"] == "free"
    assert lock(path, "run", "farm-exp-2", "sweep", "--", sys.executable, "-c", "raise SystemExit(3)")[0] == 3
    assert json.loads(path.read_text())["owner"] == "free"


def test_lock_run_on_contention_does_not_run_the_command(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    path.write_text(SHELL_EXPORT)
    marker = tmp_path / "ran"
    code, _, err = lock(path, "run", "farm-exp-99", "sweep", "--", "touch", str(marker))
    assert code == 2 and "farm-exp-13" in err and "2026-05-20T14:00:00+00:00" in err
    assert not marker.exists()


def test_lock_run_releases_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "stack-owner.json"
    proc = subprocess.Popen(
        [PS, "lock", "--file", str(path), "run", "farm-exp-1", "sweep", "--", "sleep", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(lambda: path.exists() and json.loads(path.read_text())["owner"] == "export", 20, "lock held")
    wait_for(
        lambda: subprocess.run(["pgrep", "-P", str(proc.pid), "sleep"], capture_output=True).returncode == 0,
        10,
        "the command started",
    )
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 143
    assert json.loads(path.read_text())["owner"] == "free"
