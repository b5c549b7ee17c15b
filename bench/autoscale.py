"""A burst on a real RabbitMQ queue: autoscaled from min 1 to max 6, against fixed counts of 1 and 6, side by
side in one run (three stacks, three queues, published at the same moment).

Each stack runs one numbered queue served by the test suite's pika worker (tests/fixtures/rabbit_worker.py:
prefetch 1, ack after the job, a journal of every job's start and ack). The run: IDLE s of quiet, then JOBS
jobs of SECONDS s on each queue, then quiet until every queue has drained and the autoscaled one is back at
its min. Sampled every 0.5 s from supervisord (XML-RPC): the RUNNING workers of each queue.

Reported per variant: time to drain (publish to last ack), process-seconds over the same window for all
three (from IDLE s before the burst until the end), peak processes, running workers restarted (a name whose
pid changed while it was RUNNING in every sample between), jobs cut off (started by a process that never
acked them), and for the autoscaled queue its changes and any scale-down followed by a scale-up within the
stabilization window once the burst is over (flapping).

Run: .venv/bin/python bench/autoscale.py [--jobs 200 --seconds 2 --idle 30]
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from _stacks import PS, stack_file, wait
from rabbit import WORKER, delete_queue, publish

from protea_supervisor.supervisord.control import Supervisor

AUTO = {
    "min": 1,
    "max": 6,
    "target_backlog": 10,
    "scale_up_delay": 5,
    "scale_down_window": 60,
    "cooldown": 15,
}


def make_stack(root: Path, queue: str, processes: int, auto: bool) -> Path:
    path = stack_file(root, queues=(), programs=False)
    lines = [
        f'[queues."{queue}"]',
        "numbered = true",
        f"processes = {processes}",
        f'command = "{{python}} -P {WORKER} --queue {{queue}} --record {root}/acks.log"',
        "stop_grace = 60",
    ]
    if auto:
        lines.append(f'[queues."{queue}".autoscale]')
        lines += [f"{key} = {value}" for key, value in AUTO.items()]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path


class Variant:
    def __init__(self, name: str, processes: int, auto: bool) -> None:
        self.name = name
        self.queue = f"protea.bench{uuid.uuid4().hex[:6]}.{name.replace(' ', '')}"
        self.program = "worker-" + self.queue.removeprefix("protea.").replace(".", "-")
        self.root = Path(tempfile.mkdtemp(prefix="bas-"))
        self.stack = make_stack(self.root, self.queue, processes, auto)
        self.supervisor = Supervisor(self.root / "run" / "supervisor.sock")
        self.samples: list[tuple[float, dict[str, int]]] = []  # (when, RUNNING name -> pid)

    def ps(self, *args: str) -> None:
        subprocess.run([PS, "--stack", str(self.stack), *args], check=True, capture_output=True, text=True)

    def running(self) -> dict[str, int]:
        infos = self.supervisor.all_process_info()
        return {
            i["name"]: int(i["pid"])
            for i in infos
            if i["group"] == self.program and i["statename"] == "RUNNING"
        }

    def journal(self, suffix: str = "") -> list[tuple[str, str]]:
        path = self.root / f"acks.log{suffix}"
        lines = path.read_text().splitlines() if path.exists() else []
        return [(line.split()[0], line.split()[2]) for line in lines if line.strip()]

    def drained_at(self) -> float | None:
        path = self.root / "acks.log"
        return path.stat().st_mtime if path.exists() else None


def sampler(variants: list[Variant], stop: threading.Event) -> None:
    while not stop.is_set():
        now = time.time()
        for v in variants:
            v.samples.append((now, v.running()))
        time.sleep(0.5)


def restarted(v: Variant) -> int:
    """Names whose pid changed between two consecutive samples in which the name was RUNNING."""
    count = 0
    for (_, before), (_, after) in zip(v.samples, v.samples[1:], strict=False):
        count += sum(1 for name, pid in before.items() if name in after and after[name] != pid)
    return count


def process_seconds(v: Variant, start: float, end: float) -> float:
    total = 0.0
    for (t0, running), (t1, _) in zip(v.samples, v.samples[1:], strict=False):
        lo, hi = max(t0, start), min(t1, end)
        if hi > lo:
            total += len(running) * (hi - lo)
    return total


def changes(v: Variant) -> list[tuple[float, int, int]]:
    log = v.root / "logs" / "autoscaler.log"
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        m = re.match(r"(\S+ \S+) autoscale \S+: (\d+) -> (\d+):", line)
        if m:
            when = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S"))
            found.append((when, int(m.group(2)), int(m.group(3))))
    return found


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--idle", type=float, default=30.0)
    args = parser.parse_args()
    variants = [
        Variant("autoscaled 1-6", 1, True),
        Variant("fixed 1", 1, False),
        Variant("fixed 6", 6, False),
    ]
    stop = threading.Event()
    try:
        for v in variants:
            v.ps("up")
        for v in variants:
            wait(lambda v=v: len(v.running()) == (6 if v.name == "fixed 6" else 1), 60, f"{v.name} up")
        thread = threading.Thread(target=sampler, args=(variants, stop), daemon=True)
        thread.start()
        start = time.time()
        time.sleep(args.idle)
        burst = time.time()
        for v in variants:
            publish(v.queue, args.jobs, args.seconds)
        auto = variants[0]
        deadline = args.jobs * args.seconds + 300
        for v in variants:
            wait(lambda v=v: len(v.journal()) >= args.jobs, deadline, f"{v.name} to drain")
        wait(
            lambda: len(auto.running()) == AUTO["min"], AUTO["scale_down_window"] + 120, "the autoscaled min"
        )
        time.sleep(1.0)
        end = time.time()
        stop.set()
        thread.join()
        rows = []
        for v in variants:
            acks, starts = v.journal(), v.journal(".starts")
            drain = (v.drained_at() or end) - burst
            cut = len(set(starts) - set(acks))
            peak = max(len(r) for _, r in v.samples)
            rows.append((v, drain, process_seconds(v, start, end), peak, restarted(v), cut, len(set(acks))))
        fixed6 = rows[2]
        print(f"burst: {args.jobs} jobs of {args.seconds:g} s on each queue, after {args.idle:g} s idle; "
              f"window for process-seconds: {end - start:.0f} s (the same for all three)")  # fmt: skip
        print(f"autoscale: {AUTO}")
        print(f"{'variant':<16} {'drain s':>8} {'vs 6':>6} {'proc-s':>8} {'vs 6':>6} {'peak':>5} "
              f"{'restarted':>9} {'cut off':>8} {'jobs':>5}")  # fmt: skip
        for v, drain, used, peak, rest, cut, done in rows:
            ratio_drain, ratio_used = drain / fixed6[1], used / fixed6[2]
            print(f"{v.name:<16} {drain:>8.1f} {ratio_drain:>6.2f} {used:>8.0f} {ratio_used:>6.2f} "
                  f"{peak:>5} {rest:>9} {cut:>8} {done:>5}")  # fmt: skip
        moves = changes(auto)
        drained = auto.drained_at() or end
        after = [(t, a, b) for t, a, b in moves if t >= drained]
        flaps = sum(
            1 for (t0, a0, b0), (t1, a1, b1) in itertools.pairwise(after)
            if b0 < a0 and b1 > a1 and t1 - t0 < AUTO["scale_down_window"]
        )  # fmt: skip
        print("autoscaled changes: " + ", ".join(f"+{t - burst:.0f} s {a}->{b}" for t, a, b in moves))
        print(f"flapping once the burst was over (a scale-down then a scale-up within the window): {flaps}")
    finally:
        stop.set()
        for v in variants:
            subprocess.run([PS, "--stack", str(v.stack), "down", "--force"], capture_output=True)
            delete_queue(v.queue)
            shutil.rmtree(v.root, ignore_errors=True)


if __name__ == "__main__":
    main()
