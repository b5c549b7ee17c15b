"""Shutdown with jobs in flight: `protea-supervisor down` vs what it replaces, side by side in one run.

Three busy queue workers (the demo stand-in; each takes its next job at once), each INTO seconds into a
JOB-second job, are stopped by:
  down        protea-supervisor down: every program signalled at once, each drains within its grace
  shutdown    plain supervisord shutdown (SIGTERM / `supervisorctl shutdown`): one program after another
  manage.sh   manage.sh stop: TERM every process group, wait 5 s, then kill -9 what is left

Reported: wall time from the stop command to all workers gone, and jobs completed vs interrupted.
Run: .venv/bin/python bench/down_drain.py [--job-seconds 20 --into 10]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import ps, stack_file

QUEUES = ("protea.ping", "protea.jobs", "protea.training")
WORKERS = ("worker-ping", "worker-jobs", "worker-training")
BUSY = "--idle-seconds 0"  # queues with a backlog: a worker takes the next job as soon as one is done


def wait_until_into_job(logs: Path, into: float) -> None:
    deadline = time.monotonic() + 60
    while not all("job 1 started" in read(logs / f"{w}.log") for w in WORKERS):
        if time.monotonic() > deadline:
            raise SystemExit("workers never started a job")
        time.sleep(0.05)
    time.sleep(into)  # the scenario itself: stop while every worker is INTO seconds into its job


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def jobs(logs: Path) -> tuple[int, int]:
    completed = interrupted = 0
    for worker in WORKERS:
        text = read(logs / f"{worker}.log")
        started = set(re.findall(r"job (\d+) started", text))
        done = set(re.findall(r"job (\d+) done", text))
        completed += len(done)
        interrupted += len(started - done)
    return completed, interrupted


def run_down(job_seconds: float, into: float) -> tuple[float, int, int]:
    root = Path(tempfile.mkdtemp(prefix="bd-"))
    stack = stack_file(root, queues=QUEUES, job_seconds=job_seconds, programs=False, worker_args=BUSY)
    ps(stack, "up")
    wait_until_into_job(root / "logs", into)
    began = time.monotonic()
    ps(stack, "down")
    return (time.monotonic() - began, *jobs(root / "logs"))


def run_shutdown(job_seconds: float, into: float) -> tuple[float, int, int]:
    root = Path(tempfile.mkdtemp(prefix="bs-"))
    stack = stack_file(root, queues=QUEUES, job_seconds=job_seconds, programs=False, worker_args=BUSY)
    ps(stack, "up")
    wait_until_into_job(root / "logs", into)
    pid = int((root / "run" / "supervisord.pid").read_text())
    began = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    return (time.monotonic() - began, *jobs(root / "logs"))


def run_manage_sh(job_seconds: float, into: float) -> tuple[float, int, int]:
    root = Path(tempfile.mkdtemp(prefix="bm-"))
    logs = root / "logs"
    logs.mkdir()
    procs = []
    for queue, worker in zip(QUEUES, WORKERS, strict=True):
        with (logs / f"{worker}.log").open("w") as log:
            argv = [sys.executable, "-P", "-m", "protea_supervisor.demo.worker", "--queue", queue,
                    "--job-seconds", str(job_seconds), *BUSY.split()]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    wait_until_into_job(logs, into)
    began = time.monotonic()
    for proc in procs:  # stop helper: kill -15 -- -PID
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5  # one shared 5 s deadline, polled every 2 s, then kill -9
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(2)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return (time.monotonic() - began, *jobs(logs))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job-seconds", type=float, default=20.0)
    parser.add_argument("--into", type=float, default=10.0)
    args = parser.parse_args()
    results = {
        "protea-supervisor down": run_down(args.job_seconds, args.into),
        "supervisord shutdown": run_shutdown(args.job_seconds, args.into),
        "manage.sh stop": run_manage_sh(args.job_seconds, args.into),
    }
    print(f"3 busy workers, each {args.into:g} s into a {args.job_seconds:g} s job")
    print(f"{'stopped by':<24} {'wall s':>8} {'completed':>10} {'interrupted':>12}")
    for name, (wall, completed, interrupted) in results.items():
        print(f"{name:<24} {wall:>8.1f} {completed:>10} {interrupted:>12}")
    ours = results["protea-supervisor down"][0]
    print(f"ratio supervisord shutdown / down: {results['supervisord shutdown'][0] / ours:.2f}x slower")
    print(f"manage.sh stop is {results['manage.sh stop'][0] / ours:.2f}x the time of down, and interrupted "
          f"{results['manage.sh stop'][2]} of 3 jobs")  # fmt: skip


if __name__ == "__main__":
    main()
