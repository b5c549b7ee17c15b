"""What asking the stack costs: `protea-supervisor status` (text and --json) against `supervisorctl status`,
the command an operator types without us, on the demo stack with all 11 queues up. CPU (user + sys of the
command and its children) and wall time, median of interleaved runs, so that a load on the machine falls on
each alike.

    .venv/bin/python bench/cli_start.py [--runs 20]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _stacks import BIN, PS, free_port, stack_file


def run(argv: list[str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of argv."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 3):  # supervisorctl: 3 when a program is not running (migrate EXITED)
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), wall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        ports = {k: free_port() for k in ("api_port", "web_port", "agent_port", "public_port")}
        stack = stack_file(Path(tmp), api_ready_after=0.5, **ports)
        conf = Path(tmp) / "run" / "supervisord.conf"
        commands = {
            "supervisorctl status": [str(BIN / "supervisorctl"), "-c", str(conf), "status"],
            "protea-supervisor status": [PS, "--stack", str(stack), "status"],
            "protea-supervisor status --json": [PS, "--stack", str(stack), "status", "--json"],
        }
        subprocess.run([PS, "--stack", str(stack), "up"], check=True, capture_output=True)
        try:
            found: dict[str, list[tuple[float, float]]] = {label: [] for label in commands}
            for _ in range(args.runs):
                for label, argv in commands.items():
                    found[label].append(run(argv))
        finally:
            subprocess.run([PS, "--stack", str(stack), "down", "--force"], capture_output=True)
    base = statistics.median(cpu for cpu, _ in found["supervisorctl status"])
    header = f"{'command':<34} {'CPU med':>8} {'wall med':>9} {'CPU ratio':>9}"
    print(f"{header}   ({args.runs} runs each, interleaved)")
    for label, runs in found.items():
        cpu = statistics.median(c for c, _ in runs)
        wall = statistics.median(w for _, w in runs)
        print(f"{label:<34} {cpu * 1000:>6.0f}ms {wall * 1000:>7.0f}ms {cpu / base:>9.2f}")


if __name__ == "__main__":
    main()
