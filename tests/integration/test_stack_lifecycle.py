"""A real supervisord (pytest-xprocess) running the stand-in stack: up, status, logs, down."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, ps, stack_file, wait_for

pytestmark = pytest.mark.integration
SECRET = "pl4nted-Secret-'quote\"-%-value"


def stopped_supervisord(xprocess: Any, request: pytest.FixtureRequest) -> bool:
    return not xprocess.getinfo(f"supervisord-{request.node.name}-0").isrunning()


def test_stack_comes_up_in_order_shows_in_status_and_goes_away_with_down(
    short_tmp: Path, supervisord: Callable[[Stack], None], xprocess: Any, request: pytest.FixtureRequest
) -> None:
    stack = Stack(
        stack_file(short_tmp, queues={"protea.ping": {}, "protea.predictions.batch": {"numbered": True}})
    )
    supervisord(stack)
    up = stack.ps("up", "2")
    assert up.code == 0, up.both
    assert [line.split()[0] for line in up.out.splitlines() if "ready in" in line] == [
        "migrate", "api", "web", "tunnel", "workers",
    ]  # fmt: skip
    status = stack.status()
    assert status["migrate"]["state"] == "EXITED"
    for name in (
        "api",
        "web",
        "tunnel",
        "worker-ping",
        "worker-predictions-batch-1",
        "worker-predictions-batch-2",
    ):
        assert status[name]["state"] == "RUNNING", name
        assert status[name]["pid"] > 0 and status[name]["rss_mb"] > 1
    # `up N` is remembered: a later render keeps two batch workers.
    assert json.loads((stack.root / "run" / "overrides.json").read_text())["processes"] == {
        "worker-predictions-batch": 2
    }
    assert "numprocs=2" in stack.conf.read_text()

    ctl = subprocess.run(
        [str(BIN / "supervisorctl"), "-c", str(stack.conf), "status"], capture_output=True, text=True
    )
    assert re.search(
        r"^worker-predictions-batch:worker-predictions-batch-2\s+RUNNING", ctl.stdout, re.MULTILINE
    )
    assert re.search(r"^api\s+RUNNING", ctl.stdout, re.MULTILINE)

    table = stack.ps("status")
    assert re.search(r"^worker-ping\s+RUNNING\s+\d+\s+[\d.]+\s+\S+\s+0$", table.out, re.MULTILINE), table.out
    logs = stack.ps("logs", "PREDICTIONS-batch", "-n", "5")
    assert "==> " in logs.out and "worker-predictions-batch-2.log" in logs.out
    assert stack.ps("logs", "nope").code == 1

    wait_for(lambda: "job 1 started" in stack.log("worker-ping"), 20, "a job in flight")
    down = stack.ps("down")
    assert down.code == 0, down.both
    assert "stack is down" in down.out
    assert "Worker stopped. queue=protea.ping" in stack.log("worker-ping")
    wait_for(lambda: stopped_supervisord(xprocess, request), 20, "supervisord to exit")
    assert stack.ps("status").code == 6


def test_up_starts_supervisord_itself_and_down_stops_it(short_tmp: Path) -> None:
    stack = Stack(stack_file(short_tmp))
    pidfile = stack.root / "run" / "supervisord.pid"
    try:
        up = stack.ps("up")
        assert up.code == 0, up.both
        assert "starting supervisord" in up.out
        pid = int(pidfile.read_text())
        assert stack.status()["worker-jobs"]["state"] == "RUNNING"
        again = stack.ps("up")  # idempotent: nothing to start
        assert again.code == 0 and stack.status()["worker-jobs"]["pid"] > 0
        assert stack.ps("down").code == 0
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "supervisord to exit")
    finally:
        if pidfile.exists():
            subprocess.run(["kill", "-9", pidfile.read_text().strip()], check=False)


def test_a_supervisord_that_does_not_answer_is_waited_for_never_doubled_nor_its_programs_orphaned(
    short_tmp: Path,
) -> None:
    """supervisord runs but its socket path does not answer (as while it starts, before it listens: here the
    socket is moved aside). `up` neither starts a second supervisord for the stack (it would bind the free
    path) nor takes the live programs for orphans; it waits, and goes on once the socket answers."""
    from protea_supervisor.supervisord.control import daemon_pids

    stack = Stack(stack_file(short_tmp))
    run = stack.root / "run"
    sock, aside = run / "supervisor.sock", run / "supervisor.sock.aside"
    try:
        assert stack.ps("up").code == 0
        pid = int((run / "supervisord.pid").read_text())
        worker = stack.status()["worker-jobs"]["pid"]
        assert daemon_pids(stack.conf) == [pid]
        sock.rename(aside)
        status = stack.ps("status", "--json")
        assert status.code == 6 and json.loads(status.out)["orphans"] == [], status.both
        up = subprocess.Popen([str(BIN / "protea-supervisor"), "--stack", str(stack.file), "up"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(up.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
        reader.start()

        def unharmed() -> None:
            assert daemon_pids(stack.conf) == [pid], "a second supervisord"
            assert Path(f"/proc/{worker}").exists(), "the worker was taken for an orphan"

        # Until `up` says it waits (the waiting is what is under test; a CLI start takes seconds on a loaded
        # machine), and through two of its waiting lines after that, it starts no second supervisord and
        # stops no program.
        def waiting(count: int) -> bool:
            unharmed()
            return sum("runs but does not answer" in line for line in lines) >= count

        wait_for(lambda: waiting(1), 60, "`up` to say it waits for the supervisord that does not answer")
        wait_for(lambda: waiting(2), 30, "`up` to say again that it waits")
        assert up.poll() is None, "".join(lines)
        aside.rename(sock)
        up.wait(timeout=60)
        reader.join(timeout=10)
        out = "".join(lines)
        assert up.returncode == 0, out
        assert "orphan" not in out, out
        assert daemon_pids(stack.conf) == [pid] and stack.status()["worker-jobs"]["pid"] == worker
    finally:
        if aside.exists():
            aside.rename(sock)
        stack.ps("down", "--force")


def test_down_drains_all_workers_in_parallel_and_every_job_completes(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    queues = {"protea.ping": {}, "protea.jobs": {}, "protea.training": {}}
    # 8 s jobs: on a loaded machine `down` began after 4 s jobs had finished (CI, beside a long run).
    stack = Stack(stack_file(short_tmp, queues=queues, job_seconds=8))
    supervisord(stack)
    assert stack.ps("up").code == 0
    workers = ["worker-ping", "worker-jobs", "worker-training"]
    for name in workers:
        wait_for(lambda name=name: "job 1 started" in stack.log(name), 20, f"{name} in a job")
    down = stack.ps("down")
    assert down.code == 0, down.both
    signalled, finished = [], []
    for name in workers:
        text = stack.log(name)
        assert "requeued" not in text, text
        assert "Worker stopped." in text, text
        started = re.findall(r"job (\d+) started", text)
        done = re.findall(r"job (\d+) done", text)
        assert started == done, f"{name}: a job was cut short: {text}"
        signalled.append(re.search(r"^(\S+) Stop signal received", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
        finished.append(re.findall(r"^(\S+) job \d+ done", text, re.MULTILINE)[-1])
    # Parallel drain: every worker had its stop signal before any job in hand at its signal finished. (A
    # worker may finish a job just before its signal and stop idle: that job was not drained.)
    drained = [done for done, sig in zip(finished, signalled, strict=True) if done > sig]
    assert len(drained) >= 2, (signalled, finished)
    assert max(signalled) < min(drained)


def test_failing_migration_stops_the_start_and_names_the_reason(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, migrate_exit=3))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 7
    assert (
        "gate failed at migrate: migrate exited with a non-zero status (exit status 3); nothing after it was "
        "started" in up.err
    )
    assert "migrate: FAILED with 3" in up.err  # the last lines of its log
    assert "Traceback" not in up.err
    status = stack.status()
    assert status["api"]["state"] == "STOPPED" and status["worker-ping"]["state"] == "STOPPED"


def test_missing_required_variable_is_named_before_anything_starts(short_tmp: Path) -> None:
    env_file = short_tmp / "protea.env"
    env_file.write_text("export JWT_SECRET=x\n")
    env_file.chmod(0o600)
    stack = Stack(stack_file(short_tmp, env_files=[str(env_file)], required=["PROTEA_DB_URL"]))
    up = stack.ps("up", env={"PROTEA_DB_URL": ""})
    assert up.code == 78
    assert up.err == (
        f"error: required variable PROTEA_DB_URL not set in the environment or in {env_file} "
        "(JWT_SECRET is set but PROTEA reads PROTEA_JWT_SECRET).\n"
    )
    assert not (stack.root / "run" / "supervisor.sock").exists()


def test_group_readable_env_file_is_refused_with_the_chmod(short_tmp: Path) -> None:
    env_file = short_tmp / "protea.env"
    env_file.write_text("PROTEA_DB_URL=postgresql://u:pw@127.0.0.1/db\n")
    env_file.chmod(0o640)
    up = Stack(stack_file(short_tmp, env_files=[str(env_file)])).ps("up")
    assert up.code == 78 and f"run: chmod 600 {env_file}" in up.err


def test_planted_secret_reaches_the_program_and_nothing_of_ours(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    env_file = short_tmp / "protea.env"
    escaped = SECRET.replace("\\", "\\\\").replace("'", "\\'")
    env_file.write_text(
        f"export PROTEA_JWT_SECRET='{escaped}'\nexport PROTEA_DB_URL=postgresql://127.0.0.1/x\n"
    )
    env_file.chmod(0o600)
    extra = {
        "programs": {
            "web": {
                "command": "/nonexistent/server",
                "requires_file": "missing/server.js",
                "fallback_command": "{python} -P -m protea_supervisor.demo.web",
            }
        }
    }
    stack = Stack(stack_file(short_tmp, env_files=[str(env_file)], required=["PROTEA_DB_URL"], extra=extra))
    supervisord(stack)
    outputs = [
        stack.ps("up"),
        stack.ps("status"),
        stack.ps("status", "--json"),
        stack.ps("logs", "-n", "50"),
        stack.ps("render", "--diff"),
        stack.ps("render", "--check"),
    ]
    assert outputs[0].code == 0, outputs[0].both
    api_pid = stack.status()["api"]["pid"]
    environ = Path(f"/proc/{api_pid}/environ").read_bytes().split(b"\0")
    assert b"PROTEA_JWT_SECRET=" + SECRET.encode() in environ  # delivered byte for byte through the wrapper
    assert "is missing; starting the fallback" in stack.log("web")
    assert stack.status()["web"]["state"] == "RUNNING"
    outputs.append(stack.ps("down"))
    ours = [stack.conf, stack.root / "run" / "supervisord.log", *stack.logs.glob("*.log")]
    for path in ours:
        assert SECRET not in path.read_text(errors="replace"), path
    for result in outputs:
        assert SECRET not in result.both


def test_failure_output_redacts_a_secret_the_program_printed(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    env_file = short_tmp / "protea.env"
    env_file.write_text("PROTEA_JWT_SECRET=hunter2-very-secret\n")
    env_file.chmod(0o600)
    extra = {"programs": {"migrate": {"command": "sh -c 'echo token=$PROTEA_JWT_SECRET; exit 4'"}}}
    stack = Stack(stack_file(short_tmp, env_files=[str(env_file)], extra=extra))
    supervisord(stack)
    up = stack.ps("up")
    assert up.code == 7
    assert "hunter2-very-secret" in stack.log("migrate")  # the program's own log has it ...
    assert "token=***" in up.err and "hunter2-very-secret" not in up.both  # ... our output does not
    logs = stack.ps("logs", "migrate")
    assert "token=***" in logs.out and "hunter2" not in logs.out


def test_render_check_diff_and_clear_errors(short_tmp: Path) -> None:
    stack = Stack(stack_file(short_tmp))
    check = stack.ps("render", "--check")
    assert check.code == 0 and not stack.conf.exists()
    diff = stack.ps("render", "--diff")
    assert diff.code == 0 and "+[program:api]" in diff.out and not stack.conf.exists()
    assert stack.ps("render").code == 0 and stack.conf.exists()
    assert oct(stack.conf.stat().st_mode & 0o777) == "0o600"
    assert stack.ps("render", "--diff").out.strip().endswith("is up to date.")
    missing = ps("--stack", str(short_tmp / "nope.toml"), "render")
    assert missing.code == 1 and missing.err == f"error: {short_tmp / 'nope.toml'}: stack file not found.\n"
    bad = short_tmp / "bad.toml"
    bad.write_text("[paths]\nroot = '/definitely/not/here'\n")
    result = ps("--stack", str(bad), "render")
    assert result.code == 1
    assert result.err.startswith(f"error: {bad}: paths.root /definitely/not/here does not exist")
    down = stack.ps("status")
    assert down.code == 6 and down.err.startswith("error: supervisord is not running")
    assert ps("--stack", str(stack.file), "up", "0").code == 1


def test_down_refuses_while_an_export_holds_the_lock(short_tmp: Path) -> None:
    stack = Stack(stack_file(short_tmp))
    assert stack.ps("lock", "acquire", "export", "farm-exp-13", "sweep").code == 0
    refused = stack.ps("down")
    assert refused.code == 2 and "export task farm-exp-13" in refused.err and "--force" in refused.err
    assert stack.ps("down", "--force").code == 0  # nothing running: forced down is a no-op


def test_python_dash_m_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "protea_supervisor", "--version"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONSAFEPATH": "1"},
    )
    assert result.returncode == 0 and "protea-supervisor" in result.stdout


def test_a_full_run_dir_refuses_each_change_in_one_line_and_leaves_every_record_whole(
    short_tmp: Path,
) -> None:
    """The run dir on a filesystem with no space left (a 2 MB tmpfs, filled; CI runs as root): each command
    that must write says which file and why in one line, exit 73, and leaves what was there whole; `status`
    still reads; once there is room again the same command works."""
    run = short_tmp / "run"
    run.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(run)], capture_output=True
    )
    assert mounted.returncode == 0, f"mounting a tmpfs needs root: {mounted.stderr!r}"
    stack = Stack(stack_file(short_tmp))
    try:
        assert stack.ps("up").code == 0
        records = {p.name: p.read_bytes() for p in run.glob("*.json")}
        filler = run / "filler"
        with filler.open("wb") as out, contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 65536)
        for args in (("scale", "protea.jobs", "1"), ("render",), ("gate", "retry")):
            result = stack.ps(*args)
            assert result.code == 73, (args, result.both)
            assert "cannot write" in result.err and "No space left on device" in result.err, result.err
            assert "Traceback" not in result.both and "internal error" not in result.both
        assert stack.status()["worker-jobs"]["state"] == "RUNNING"
        for name, data in records.items():
            if name in ("overrides.json", "deployed.json"):
                assert (run / name).read_bytes() == data, name
        assert not list(run.glob(".*.tmp")), "a temp file left behind"
        filler.unlink()
        assert stack.ps("scale", "protea.jobs", "1").code == 0
    finally:
        stack.ps("down", "--force")
        subprocess.run(["umount", "-l", str(run)], capture_output=True)
