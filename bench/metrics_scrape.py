"""The cost of a metrics scrape with 200 processes: the metrics listener vs a polling exporter, in one run.

  listener   protea-supervisor's metrics listener: states from events, RSS from /proc; no XML-RPC per scrape
  polling    what a supervisord exporter does per scrape: one getAllProcessInfo over the socket (the
             baseline the listener replaces; it also costs supervisord CPU on every scrape)

Reported: wall time per scrape (median and p90 of N), and supervisord's own CPU time over the N scrapes.
Run: .venv/bin/python bench/metrics_scrape.py [--processes 200 --scrapes 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path

from supervisor.xmlrpc import SupervisorTransport

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import free_port, ps, stack_file

QUEUE = "protea.embeddings.batch"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(action: Callable[[], object], count: int, pid: int) -> tuple[list[float], float]:
    times = []
    cpu = cpu_seconds(pid)
    for _ in range(count):
        began = time.perf_counter()
        action()
        times.append(time.perf_counter() - began)
    return times, cpu_seconds(pid) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=200)
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bms-"))
    port = free_port()
    stack = stack_file(root, queues=(QUEUE,), programs=False)
    section = f'[queues."{QUEUE}"]\n'
    text = stack.read_text().replace(
        section, section + f'numbered = true\nprocesses = {args.processes}\ncommand = "sleep 3600"\n'
    )
    text = text.replace("[metrics]\nenabled = false", f"[metrics]\nenabled = true\nport = {port}")
    stack.write_text(text)
    ps(stack, "up")
    try:
        pid = int((root / "run" / "supervisord.pid").read_text())
        url = f"http://127.0.0.1:{port}/metrics"
        socket = root / "run" / "supervisor.sock"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())

        def poll() -> object:
            transport = SupervisorTransport(None, None, serverurl=f"unix://{socket}")
            return xmlrpc.client.ServerProxy(
                "http://127.0.0.1", transport=transport
            ).supervisor.getAllProcessInfo()

        deadline = time.monotonic() + 120
        while scrape().count('protea_process_up{group="worker-embeddings-batch"') < args.processes:
            if time.monotonic() > deadline:
                raise SystemExit("the metrics listener never saw every process")
            time.sleep(0.5)
        series = sum(1 for line in scrape().splitlines() if line and not line.startswith("#"))
        ours, ours_cpu = timed(scrape, args.scrapes, pid)
        theirs, theirs_cpu = timed(poll, args.scrapes, pid)
    finally:
        ps(stack, "down")

    def row(name: str, times: list[float], cpu: float) -> str:
        p90 = sorted(times)[int(len(times) * 0.9) - 1]
        median = statistics.median(times) * 1000
        return f"{name:<10} {median:>10.1f} {p90 * 1000:>8.1f} {cpu * 1000 / len(times):>16.2f}"

    print(f"{args.processes} worker processes, {series} series per scrape, {args.scrapes} scrapes each")
    print(f"{'per scrape':<10} {'median ms':>10} {'p90 ms':>8} {'supervisord CPU ms':>16}")
    print(row("listener", ours, ours_cpu))
    print(row("polling", theirs, theirs_cpu))
    print("listener scrapes make 0 XML-RPC calls; polling makes 1 per scrape")


if __name__ == "__main__":
    main()
