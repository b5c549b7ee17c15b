"""Cold start of the demo stack: through the gate vs a manage.sh-style sequential start, in one run.

Both start the same stand-ins (migrate 0.5 s; an API whose /jobs answers after 2 s; 11 queue workers; web;
tunnel) on fresh loopback ports, and stop when the tunnel is up:
  gate        `protea-supervisor up` from nothing: supervisord is started, then the gate runs migrate ->
              api ready -> workers + web -> web ready -> tunnel, each step on its predecessor's readiness
  manage.sh   manage.sh start + expose.sh as they run today: migrate, the API polled with curl every 1 s,
              workers launched one by one, the frontend, a fixed `sleep 6` and one curl, then the tunnel

Run: .venv/bin/python bench/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import ALL_QUEUES, free_port, ps, stack_file

PY = [sys.executable, "-P", "-m"]


def gate_start() -> float:
    root = Path(tempfile.mkdtemp(prefix="bg-"))
    api, web, agent = free_port(), free_port(), free_port()
    stack = stack_file(root, api_port=api, web_port=web, agent_port=agent)
    began = time.monotonic()
    ps(stack, "up")
    elapsed = time.monotonic() - began
    ps(stack, "down")
    return elapsed


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
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
        launch("api", [*PY, "protea_supervisor.demo.api", "--port", str(api), "--ready-after", "2"])
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
    print(f"cold start of the demo stack (16 programs; API ready 2 s after it starts), {args.runs} runs each")
    print(f"{'started by':<28} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, times in (("protea-supervisor up (gate)", gate), ("manage.sh start + expose.sh", manage)):
        print(f"{name:<28} {statistics.median(times):>9.2f} {min(times):>7.2f} {max(times):>7.2f}")
    print(f"ratio manage.sh / gate: {statistics.median(manage) / statistics.median(gate):.2f}x")


if __name__ == "__main__":
    main()
