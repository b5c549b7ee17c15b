"""Scaling a busy worker group 2 -> 4: `protea-supervisor scale` vs plain `supervisorctl update`, in one run.

Two busy batch workers (the demo stand-in, which finishes the job in hand on TERM), each INTO seconds into
a JOB-second job, when the count goes from 2 to 4 by:
  scale           protea-supervisor scale protea.predictions.batch 4 (the protea.syncGroup extension)
  update          numprocs=4 rendered, then `supervisorctl update`, with the stack's grace (JOB + 30 s)
  update, 10 s    the same with supervisord's default stopwaitsecs=10, as a hand-written config has it

Reported: wall time of the command, running workers restarted, and jobs interrupted (started by a worker
incarnation that ended without finishing them).
Run: .venv/bin/python bench/scale.py [--job-seconds 20 --into 5]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import BIN, ps, stack_file

QUEUE = "protea.predictions.batch"
PROGRAM = "worker-predictions-batch"
BUSY = "--idle-seconds 0"


def read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def pids(stack: Path) -> dict[str, int]:
    processes = json.loads(ps(stack, "status", "--json"))["processes"]
    return {p["name"]: p["pid"] for p in processes if p["name"].startswith(PROGRAM)}


def interrupted(logs: Path, restarted: list[str]) -> int:
    """Jobs the restarted workers' first incarnation started and never finished."""
    count = 0
    for name in restarted:
        first = read(logs / f"{name}.log").split("Worker started")[1]
        started = set(re.findall(r"job (\d+) started", first))
        done = set(re.findall(r"job (\d+) done", first))
        count += len(started - done)
    return count


def busy_stack(job_seconds: float, into: float, grace: int | None) -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="bsc-"))
    stack = stack_file(root, queues=(QUEUE,), job_seconds=job_seconds, programs=False, worker_args=BUSY)
    section = f'[queues."{QUEUE}"]\n'
    text = stack.read_text().replace(section, section + "numbered = true\nprocesses = 2\n")
    if grace is not None:
        text = re.sub(r"stop_grace = \d+", f"stop_grace = {grace}", text)
    stack.write_text(text)
    ps(stack, "up")
    logs = root / "logs"
    deadline = time.monotonic() + 60
    while not all("job 1 started" in read(logs / f"{PROGRAM}-{n}.log") for n in (1, 2)):
        if time.monotonic() > deadline:
            raise SystemExit("workers never started a job")
        time.sleep(0.05)
    time.sleep(into)  # the scenario: change the count while each worker is INTO seconds into its job
    return root, stack


def measure(job_seconds: float, into: float, how: str) -> tuple[float, int, int]:
    root, stack = busy_stack(job_seconds, into, 10 if how == "update, 10 s" else None)
    before = pids(stack)
    began = time.monotonic()
    if how == "scale":
        ps(stack, "scale", QUEUE, "4")
    else:
        (root / "run" / "overrides.json").write_text(json.dumps({"processes": {PROGRAM: 4}}))
        ps(stack, "render")
        ctl = [str(BIN / "supervisorctl"), "-c", str(root / "run" / "supervisord.conf")]
        subprocess.run([*ctl, "update"], check=True, capture_output=True)
        # The rendered programs are autostart=false (the gate starts them), so update leaves the new group
        # stopped; a hand-written config would start it itself. Either way it ends with all four running.
        subprocess.run([*ctl, "start", f"{PROGRAM}:*"], check=True, capture_output=True)
    wall = time.monotonic() - began
    after = pids(stack)
    restarted = [name for name, pid in before.items() if after.get(name) != pid]
    lost = interrupted(root / "logs", restarted)
    ps(stack, "down")
    return wall, len(restarted), lost


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--job-seconds", type=float, default=20.0)
    parser.add_argument("--into", type=float, default=5.0)
    args = parser.parse_args()
    rows = {how: measure(args.job_seconds, args.into, how) for how in ("scale", "update", "update, 10 s")}
    print(f"2 -> 4 workers, the 2 running ones each {args.into:g} s into a {args.job_seconds:g} s job")
    print(f"{'changed by':<16} {'wall s':>8} {'restarted':>10} {'interrupted':>12}")
    for how, (wall, restarted, lost) in rows.items():
        print(f"{how:<16} {wall:>8.2f} {restarted:>10} {lost:>12}")
    ours = rows["scale"][0]
    print(f"supervisorctl update takes {rows['update'][0] / ours:.0f}x the wall time of scale")


if __name__ == "__main__":
    main()
