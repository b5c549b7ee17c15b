"""The [rpcinterface:protea] waker, on and off, side by side in one run.

  exit -> event   a program crashes (random lifetime 0.1-0.3 s, autorestart); the time from its exit to a
                  listener receiving PROCESS_STATE_EXITED (n=20)
  gate cold start `protea-supervisor up` of the demo stack from nothing (API ready 2 s after start); 3 runs
  down            `protea-supervisor down` of that stack (idle workers)
  idle CPU        supervisord's CPU time over 10 s with the stack up and idle

Run: .venv/bin/python bench/fast_reactions.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import free_port, ps, stack_file

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from fixtures.exit_latency import crasher_section, latencies_ms, recorder_section, supervisord_config


def exit_to_event(fast: bool, runs: int = 20) -> float:
    here = Path(tempfile.mkdtemp(prefix="bf-"))
    exits, events = here / "exits.txt", here / "events.txt"
    conf = supervisord_config(here, fast, crasher_section(exits) + recorder_section(events))
    argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(conf)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not events.exists() or len(events.read_text().splitlines()) <= runs:
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait()
    return statistics.median(latencies_ms(exits, events, skip=1)[:runs])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_times(fast: bool) -> tuple[float, float, float]:
    root = Path(tempfile.mkdtemp(prefix="bs-"))
    api, web, agent, public = free_port(), free_port(), free_port(), free_port()
    stack = stack_file(root, api_port=api, web_port=web, agent_port=agent, public_port=public)
    stack.write_text(stack.read_text() + f"[control]\nfast_reactions = {'true' if fast else 'false'}\n")
    began = time.monotonic()
    ps(stack, "up")
    up = time.monotonic() - began
    pid = int((root / "run" / "supervisord.pid").read_text())
    time.sleep(3)  # let the start-up settle before measuring idle
    used = cpu_seconds(pid)
    time.sleep(10)  # the idle window
    idle_ms = 1000 * (cpu_seconds(pid) - used)
    began = time.monotonic()
    ps(stack, "down")
    return up, time.monotonic() - began, idle_ms


def main() -> None:
    runs = 3
    latency = {fast: exit_to_event(fast) for fast in (True, False)}
    samples: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for _ in range(runs):  # alternate, so drift on the machine hits both alike
        for fast in (True, False):
            samples[fast].append(stack_times(fast))
    rows = {
        fast: (latency[fast], *(statistics.median(s[i] for s in samples[fast]) for i in range(3)))
        for fast in (True, False)
    }
    print(f"the protea waker on vs off (supervisor 4.3.0); medians; stack rows over {runs} runs each")
    print(f"{'':<22} {'on':>10} {'off':>10} {'off / on':>9}")
    names = ("exit -> event ms", "gate cold start s", "down s", "idle CPU ms / 10 s")
    for i, name in enumerate(names):
        on, off = rows[True][i], rows[False][i]
        ratio = f"{off / on:.1f}x" if on else "-"
        print(f"{name:<22} {on:>10.2f} {off:>10.2f} {ratio:>9}")
    print(json.dumps({"on": rows[True], "off": rows[False]}))


if __name__ == "__main__":
    main()
