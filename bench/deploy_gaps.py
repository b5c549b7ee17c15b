"""Deploys under load: what the public sees during `protea-supervisor tick`, per kind of commit.

An app repo behind a real local git remote (the test suite's: an API stand-in that serves its VERSION,
answers 503 for its first 2 s and 500 while a BROKEN file exists, a web build, a dependency file) is
deployed by a real supervisord with a worker on a real RabbitMQ queue. Before each tick, jobs of 2 s are
published so that the worker has one in hand; during the tick, the API's /jobs and the web page are each
polled every 50 ms.

  api-change   VERSION changes: no install, no build
  deps-change  the dependency file changes: install; the API and the workers restart, web keeps its build
  web-change   the web page changes: a build, web restarts onto it
  break-api    the new revision's API answers 500: with the canary (deploy.api_canary_*) it never serves

Reported per kind: the tick's exit, failed API polls and the longest API gap, failed web polls and the
longest web gap, and jobs cut off (acked twice or never) out of those published. Needs this machine's
Postgres and RabbitMQ, like the suite.
Run: .venv/bin/python bench/deploy_gaps.py [--no-canary] [--socket]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from conftest import Stack, free_port
from deploy_app import APP, AppRepo, Poller, deploy_stack, on_socket
from rabbit import delete_queue, publish

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stacks import wait

JOBS = 6
JOB_SECONDS = 2.0
WARM_UP = 2.0
# The suite's app API, with a warm-up like PROTEA's: /jobs answers 503 for WARM_UP s after the start.
WARMING_APP = APP.replace(
    "class Handler(http.server.BaseHTTPRequestHandler):",
    f"import time\nready_at = time.monotonic() + {WARM_UP}\n"
    "class Handler(http.server.BaseHTTPRequestHandler):",
).replace("self.send_response(500 if broken else 200)",
          "self.send_response(500 if broken else 200 if time.monotonic() >= ready_at else 503)")  # fmt: skip
assert WARMING_APP.count("ready_at") == 2
# The same API on the socket supervisord holds (programs.api.socket); with a port (the canary) it is the API
# above.
SOCKET_APP = on_socket(WARMING_APP, WARM_UP)
KINDS: dict[str, dict[str, str | None]] = {
    "api-change": {"VERSION": "v{n}\n"},
    "deps-change": {"pyproject.toml": "[project]\nname='app'\nversion='{n}'\n"},
    "web-change": {"apps/web/page.txt": "page {n}"},
    "break-api": {"BROKEN": "yes", "VERSION": "v{n}\n"},  # last: nothing after it removes BROKEN
}


def acks(stack: Stack) -> collections.Counter[int]:
    path = stack.root / "acks.log"
    text = path.read_text() if path.exists() else ""
    return collections.Counter(int(line.split()[0]) for line in text.splitlines())


Row = tuple[str, int, float, Poller, Poller, int]  # kind, exit, tick s, API poller, web poller, jobs cut off


def measure(no_canary: bool, socket: bool) -> list[Row]:
    """One tick of each kind under load; a row per kind."""
    base = Path(tempfile.mkdtemp(prefix="bd-"))
    queue = f"bench.deploy.{int(time.time())}"
    repo = AppRepo(base)
    repo.commit("an API with a warm-up", {"app.py": SOCKET_APP if socket else WARMING_APP})
    canary, api_port = free_port(), free_port()
    extra: dict[str, Any] = (
        {}
        if no_canary
        else {"deploy": {"api_canary_command": f"{{python}} -P app.py {canary}",
                         "api_canary_url": f"http://127.0.0.1:{canary}/jobs"}}
    )  # fmt: skip
    if socket:
        extra["programs"] = {"api": {"command": "{python} -P app.py fd0", "directory": "{root}",
                                     "socket": f"tcp://127.0.0.1:{api_port}"}}  # fmt: skip
    stack = deploy_stack(base, repo, queue, extra=extra, api_port=api_port)
    assert stack.ps("render").code == 0
    daemon = subprocess.Popen(
        [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(stack.conf)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    rows: list[Row] = []
    try:
        wait(lambda: (stack.conf.parent / "supervisor.sock").exists(), 30, "supervisord started")
        first = stack.ps("tick")
        if first.code != 10:
            raise SystemExit(f"the first deploy failed: {first.both}")
        worker = "worker-" + queue.replace(".", "-")
        api_url = f"http://127.0.0.1:{stack.api_port}/jobs"
        web_url = tomllib.loads(stack.file.read_text())["probes"]["web_url"]
        published = 0
        for n, (kind, files) in enumerate(KINDS.items(), start=2):
            repo.commit(kind, {k: (v.format(n=n) if v else v) for k, v in files.items()})
            publish(queue, JOBS, seconds=JOB_SECONDS, first=published)
            published += JOBS
            wait(lambda: "started" in stack.log(worker), 20, "a job in flight")
            with Poller(api_url) as api, Poller(web_url) as web:
                began = time.monotonic()
                tick = stack.ps("tick")
                took = time.monotonic() - began
            wait(lambda p=published: len(acks(stack)) >= p, 120, "every job acked")
            twice = sum(1 for count in acks(stack).values() if count > 1)
            rows.append((kind, tick.code, took, api, web, twice))
    finally:
        subprocess.run([str(Path(sys.executable).parent / "protea-supervisor"), "--stack", str(stack.file),
                        "down", "--force"], capture_output=True)  # fmt: skip
        daemon.terminate()
        daemon.wait()
        delete_queue(queue)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-canary", action="store_true", help="deploy without deploy.api_canary_*")
    parser.add_argument("--socket", action="store_true", help="the API on a socket supervisord holds")
    args = parser.parse_args()
    rows = measure(args.no_canary, args.socket)
    mode = "without the canary" if args.no_canary else "with the canary"
    mode += ", the API on a socket supervisord holds" if args.socket else ""
    print(f"deploys under load ({mode}); API (warm-up {WARM_UP:g} s) and web polled every 50 ms during the "
          f"tick; {JOBS} jobs of {JOB_SECONDS:g} s per deploy")  # fmt: skip
    print(f"{'commit kind':<12} {'exit':>4} {'tick s':>7} {'API failed':>11} {'API gap s':>10} "
          f"{'API slowest s':>14} {'web failed':>11} {'web gap s':>10} {'jobs cut off':>13}")  # fmt: skip
    for kind, code, took, api, web, twice in rows:
        print(f"{kind:<12} {code:>4} {took:>7.1f} {f'{api.failed}/{api.polls}':>11} {api.longest:>10.2f} "
              f"{api.slowest:>14.2f} {f'{web.failed}/{web.polls}':>11} {web.longest:>10.2f} "
              f"{twice:>13}")  # fmt: skip


if __name__ == "__main__":
    main()
