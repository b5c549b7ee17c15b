"""Outage to serving again: the tunnel watchdog (default settings) vs deploy-keeper's ngrok trigger.

The tunnel stand-in is told to fail as ngrok does (hang: alive but the public URL stops answering; exit;
5xx with an ngrok error code; drop: the agent API no longer lists the tunnel). Measured: from the failure to
the public URL answering again from a new process.
  watchdog      protea-supervisor's tunnel-watch listener with the shipped defaults (probe every 5 s on its
                own clock, 3 failures 0.5 s apart, HEAD with a 2 s timeout) or the rules given with --set.
                A failure lands at a random point (seeded) of the probe cycle, several times per mode on
                one stack; median and worst are shown.
  deploy-keeper its `ngrok_tunnel_down` trigger as it runs today: `curl -sfI --max-time 5` on the public URL
                every 60 s (TRIGGER_CHECK_INTERVAL_SEC); on failure pkill, sleep 1, start ngrok again. It
                never looks at the agent API, so `drop` goes unnoticed. The failure lands at a random point
                of the 60 s cycle (seeded).
Run: .venv/bin/python bench/tunnel_outage.py [--samples N] [--set probe_interval=S ...] [--modes hang,exit]
     [--no-deploy-keeper]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import free_port, ps, stack_file

MODES = ("hang", "exit", "5xx", "drop")
CHECK_INTERVAL = 60.0
GRACE = 20.0  # tunnel_watch.grace, shipped default
PROBE_INTERVAL = 5.0  # tunnel_watch.probe_interval, shipped default


def public_serves(url: str, timeout: float = 0.5) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as response:
            return response.status < 500 and "Ngrok-Error-Code" not in response.headers
    except (urllib.error.URLError, OSError):
        return False


def listed(agent: str) -> bool:
    try:
        with urllib.request.urlopen(agent, timeout=0.5) as response:
            return bool(json.load(response)["tunnels"])
    except (urllib.error.URLError, OSError, ValueError, KeyError):
        return False


def tunnel_pid(stack: Path) -> int:
    return int(
        next(
            p["pid"] for p in json.loads(ps(stack, "status", "--json"))["processes"] if p["name"] == "tunnel"
        )
    )


def watchdog(mode: str, phases: list[float], rules: dict[str, str]) -> list[float]:
    root = Path(tempfile.mkdtemp(prefix="bt-"))
    api, web, agent, public = free_port(), free_port(), free_port(), free_port()
    stack = stack_file(
        root, api_port=api, web_port=web, agent_port=agent, public_port=public, api_ready_after=0.5
    )
    if rules:
        table = "".join(f"{key} = {value}\n" for key, value in rules.items())
        stack.write_text(stack.read_text() + f"[tunnel_watch]\n{table}")
    url, agent_url = f"http://127.0.0.1:{public}/", f"http://127.0.0.1:{agent}/api/tunnels"
    ps(stack, "up")
    times = []
    try:
        for phase in phases:
            healthy_at = wait_healthy_past_grace(root, tunnel_pid(stack))
            # The failure lands `phase` s into the probe cycle that began with that healthy probe.
            time.sleep(max(0.0, healthy_at + phase - time.time()))
            before = tunnel_pid(stack)
            began = time.monotonic()
            (root / "tunnel-control").write_text(mode)
            while True:
                if public_serves(url) and listed(agent_url) and tunnel_pid(stack) not in (0, before):
                    times.append(time.monotonic() - began)
                    break
                if time.monotonic() - began > 600:
                    raise SystemExit(f"{mode}: not serving again after 600 s")
                time.sleep(0.1)
        return times
    finally:
        ps(stack, "down")


def wait_healthy_past_grace(root: Path, pid: int) -> float:
    """Wait for a healthy probe of tunnel process `pid` after its grace period (so the backoff is reset);
    return when it answered. (The watchdog's file still describes the previous process until the new one is
    RUNNING: without the pid, the next outage could land on a tunnel still starting.)"""
    deadline = time.monotonic() + 120
    while True:
        doc = json.loads((root / "run" / "tunnel-watch.json").read_text() or "{}")
        mine = doc.get("tunnel_pid") == pid
        if mine and doc.get("last_ok") and doc.get("last_probe_at", 0) > doc.get("started_at", 0) + GRACE:
            return float(doc["last_probe_at"])
        if time.monotonic() > deadline:
            raise SystemExit("the watchdog never saw a healthy tunnel past its grace")
        time.sleep(0.2)


def deploy_keeper(mode: str, phase: float) -> float | None:
    root = Path(tempfile.mkdtemp(prefix="bk-"))
    agent, public = free_port(), free_port()
    control = root / "tunnel-control"
    argv = [sys.executable, "-P", "-m", "protea_supervisor.demo.tunnel", "--agent-port", str(agent),
            "--public-port", str(public), "--public-url", f"http://127.0.0.1:{public}/",
            "--control", str(control)]  # fmt: skip
    url = f"http://127.0.0.1:{public}/"

    def start() -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        while not public_serves(url):
            time.sleep(0.05)
        return proc

    proc = start()
    try:
        next_check = time.monotonic() + CHECK_INTERVAL
        time.sleep(CHECK_INTERVAL - phase)  # the failure lands `phase` s before the next check
        began = time.monotonic()
        control.write_text(mode)
        limit = began + 2 * CHECK_INTERVAL + 20
        while time.monotonic() < limit:
            time.sleep(max(0.0, next_check - time.monotonic()))
            next_check += CHECK_INTERVAL
            if public_serves(url, timeout=5):  # curl -sfI --max-time 5
                continue
            os.killpg(proc.pid, signal.SIGKILL)  # pkill -f "ngrok http --domain=..."
            proc.wait()
            time.sleep(1)
            proc = start()
            return time.monotonic() - began
        return None  # never noticed within two cycles
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=3, help="outages per mode for the watchdog")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="a tunnel_watch key instead of its shipped default (repeatable), e.g. probe_interval=10",
    )  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated failure modes")
    parser.add_argument("--no-deploy-keeper", action="store_true", help="measure the watchdog only")
    args = parser.parse_args()
    rules = dict(item.split("=", 1) for item in args.set)
    interval = float(rules.get("probe_interval", PROBE_INTERVAL))
    rng = random.Random(42)
    rows = []
    for mode in args.modes.split(","):
        phases = [rng.uniform(0, interval) for _ in range(args.samples)]
        ours = watchdog(mode, phases, rules)
        theirs = None if args.no_deploy_keeper else deploy_keeper(mode, rng.uniform(0, CHECK_INTERVAL))
        rows.append((mode, ours, theirs))
    shown_rules = ", ".join(f"{k} {v}" for k, v in rules.items()) or "shipped defaults"
    print(
        f"outage to serving again, seconds (watchdog: {shown_rules}, "
        f"{args.samples} outages per mode; deploy-keeper: one)"
    )
    print(f"{'failure':<8} {'watchdog median':>16} {'worst':>6} {'deploy-keeper':>14} {'ratio':>7}")
    for mode, ours, theirs in rows:
        median = statistics.median(ours)
        shown = f"{theirs:.1f}" if theirs is not None else "-" if args.no_deploy_keeper else "unnoticed"
        ratio = f"{theirs / median:.1f}x" if theirs is not None else "-"
        print(f"{mode:<8} {median:>16.1f} {max(ours):>6.1f} {shown:>14} {ratio:>7}")
    print(
        "deploy-keeper's worst case is its 60 s trigger interval plus a 5 s probe (and 300 s when only the "
        "poll tick notices)."
    )


if __name__ == "__main__":
    main()
