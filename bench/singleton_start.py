"""What the broker's count costs a singleton worker's start: `exec --singleton Q -- true` with the lock only
(no AMQP URL in its env file, so the count is skipped and said so) against the lock and RabbitMQ's own count
of Q's consumers (a passive queue.declare), interleaved, on this machine's Postgres and RabbitMQ.

    .venv/bin/python bench/singleton_start.py [--runs 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BIN = Path(sys.executable).parent / "protea-supervisor"
DB = "postgresql://postgres@127.0.0.1:5432/postgres"
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"


def start(env_file: Path, queue: str) -> float:
    argv = [str(BIN), "exec", "--env-file", str(env_file), "--singleton", queue, "--host-name", "bench",
            "--", "true"]  # fmt: skip
    env = {**os.environ, "SUPERVISOR_PROCESS_NAME": "worker", "SUPERVISOR_GROUP_NAME": "worker"}
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"exec failed: {done.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    queue = f"bench.singleton.{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        kinds = {
            "lock only": f"PROTEA_DB_URL={DB}\n",
            "lock + broker count": f"PROTEA_DB_URL={DB}\nPROTEA_AMQP_URL={AMQP}\n",
        }
        for label, text in kinds.items():
            path = Path(tmp) / f"{len(files)}.env"
            path.write_text(text)
            path.chmod(0o600)
            files[label] = path
        times: dict[str, list[float]] = {label: [] for label in files}
        for _ in range(args.runs):  # interleaved: a load on the machine falls on both alike
            for label, path in files.items():
                times[label].append(start(path, queue))
    base = statistics.median(times["lock only"])
    print(f"{'start':<22} {'median':>8} {'p90':>8} {'ratio':>6}   ({args.runs} runs each, interleaved)")
    for label, runs in times.items():
        p90 = statistics.quantiles(runs, n=10)[-1]
        median = statistics.median(runs)
        print(f"{label:<22} {median * 1000:>6.0f}ms {p90 * 1000:>6.0f}ms {median / base:>6.2f}")


if __name__ == "__main__":
    main()
