"""Cold start of the demo stack: through the gate vs a manage.sh-style sequential start, in one run.

Both start the same stand-ins (migrate 0.5 s; an API whose /jobs answers after 3 s; 11 queue workers with
`startsecs` 5 s; web; tunnel) on fresh loopback ports. Measured: from the command to the tunnel's agent API
answering (the public is served), and for the gate also when `up` returned (the workers' readiness
reported) and the chain and overhead `up` prints.
  gate        `protea-supervisor up` from nothing: supervisord is started, then the gate runs migrate ->
              api ready -> web + workers -> web ready -> tunnel; the workers' startsecs is reported last,
              not waited for before the tunnel
  manage.sh   manage.sh start + expose.sh as they run today: migrate, the API polled with curl every 1 s,
              workers launched one by one, the frontend, a fixed `sleep 6` and one curl, then the tunnel

Run: .venv/bin/python bench/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import ALL_QUEUES, PS, free_port, ps, stack_file

PY = [sys.executable, "-P", "-m"]


API_READY_AFTER = 3.0
WORKER_STARTSECS = 5
SUMMARY = re.compile(
    r"the public chain \(.*\) took ([0-9.]+) s, the whole gate ([0-9.]+) s; overhead ([0-9.]+) s"
)


def gate_start() -> tuple[float, float, float, float]:
    """(to the public served, to `up` returning, the chain, the overhead) in seconds."""
    root = Path(tempfile.mkdtemp(prefix="bg-"))
    api, web, agent = free_port(), free_port(), free_port()
    stack = stack_file(root, api_port=api, web_port=web, agent_port=agent, api_ready_after=API_READY_AFTER,
                       worker_startsecs=WORKER_STARTSECS)  # fmt: skip
    began = time.monotonic()
    up = subprocess.Popen([PS, "--stack", str(stack), "up"], stdout=subprocess.PIPE, text=True)
    while not answers(f"http://127.0.0.1:{agent}/api/tunnels", timeout=0.2):
        if up.poll() is not None and up.returncode:
            raise SystemExit(f"up failed: {up.returncode}")
        time.sleep(0.02)
    served = time.monotonic() - began
    out, _ = up.communicate()
    returned = time.monotonic() - began
    ps(stack, "down")
    match = SUMMARY.search(out)
    if match is None:
        raise SystemExit(f"`up` printed no chain summary:\n{out}")
    return served, returned, float(match.group(1)), float(match.group(3))


def answers(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except OSError:
        return False


def manage_sh_start() -> float:
    root = Path(tempfile.mkdtemp(prefix="bm-"))
    logs = root / "logs"
    logs.mkdir()
    api, web, agent = free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []

    def launch(name: str, argv: list[str]) -> None:  # the launch helper: setsid, append to logs/<name>.log
        with (logs / f"{name}.log").open("ab") as log:
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    began = time.monotonic()
    try:
        subprocess.run([*PY, "protea_supervisor.demo.migrate", "--seconds", "0.5"], check=True,
                       capture_output=True)  # fmt: skip
        ready_after = str(API_READY_AFTER)
        launch("api", [*PY, "protea_supervisor.demo.api", "--port", str(api), "--ready-after", ready_after])
        for _ in range(120):  # curl -sf :8000/jobs every 1 s, up to 120 tries
            if answers(f"http://127.0.0.1:{api}/jobs"):
                break
            time.sleep(1)
        for queue in ALL_QUEUES:
            launch(f"worker-{queue}", [*PY, "protea_supervisor.demo.worker", "--queue", queue])
        launch("frontend", [*PY, "protea_supervisor.demo.web", "--port", str(web)])
        time.sleep(6)  # the fixed sleep before the one frontend probe
        answers(f"http://127.0.0.1:{web}")
        # expose.sh: checks the API and the frontend, then runs ngrok in the foreground
        answers(f"http://127.0.0.1:{api}/jobs")
        answers(f"http://127.0.0.1:{web}")
        launch("expose", [*PY, "protea_supervisor.demo.tunnel", "--agent-port", str(agent),
                          "--public-url", f"http://127.0.0.1:{web}"])  # fmt: skip
        while not answers(f"http://127.0.0.1:{agent}/api/tunnels"):
            time.sleep(0.05)
        return time.monotonic() - began
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    gate = [gate_start() for _ in range(args.runs)]
    manage = [manage_sh_start() for _ in range(args.runs)]
    served, returned, chain, overhead = (statistics.median(column) for column in zip(*gate, strict=True))
    print(
        f"cold start of the demo stack (16 programs; API ready {API_READY_AFTER:g} s after it starts, "
        f"workers' startsecs {WORKER_STARTSECS} s), {args.runs} runs each, medians"
    )
    print(f"{'started by':<28} {'public served s':>16} {'min s':>7} {'max s':>7}")
    rows = (("protea-supervisor up (gate)", [g[0] for g in gate]), ("manage.sh start + expose.sh", manage))
    for name, times in rows:
        print(f"{name:<28} {statistics.median(times):>16.2f} {min(times):>7.2f} {max(times):>7.2f}")
    print(f"ratio gate / manage.sh: {served / statistics.median(manage):.2f}")
    print(
        f"gate: the public chain {chain:.2f} s, served at {served:.2f} s (chain {served - chain:+.2f} s); "
        f"`up` returned at {returned:.2f} s with the workers' readiness; overhead `up` reported "
        f"{overhead:.2f} s"
    )


if __name__ == "__main__":
    main()
