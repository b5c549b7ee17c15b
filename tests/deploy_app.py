"""A small app repo behind a real local git remote, and a stack that deploys it (deploy tick and timer tests).

The app's API stand-in serves its VERSION file (500 when a BROKEN file exists); `apps/web` has a build
script that makes a Next.js-shaped standalone build; `pyproject.toml` is the dependency file. Prerequisites
are this machine's real Postgres and RabbitMQ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from conftest import Stack, deep_update, free_port, stack_file
from rabbit import AMQP, WORKER_COMMAND

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.invalid",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.invalid",
}

APP = """import http.server, os, pathlib, sys
here = pathlib.Path(__file__).parent
version = (here / "VERSION").read_text().strip()
broken = (here / "BROKEN").exists()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{version} {os.environ.get('PROTEA_REVISION', '-')}".encode()
        self.send_response(500 if broken else 200)
        self.send_header("X-Api-Pid", str(os.getpid()))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
SERVE = 'http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()'


def on_socket(app: str, warm_up: float) -> str:
    """`app` that, run with `fd0` for its port, serves on supervisord's socket (fd 0) once a start-up of
    `warm_up` s is over, as `uvicorn --fd 0` accepts only once the app has started; with a file HANG in its
    directory that start-up never ends. On SIGTERM it stops accepting and finishes the requests it has
    before it exits, as uvicorn does (the end-to-end stage's real uvicorn: 0 failed requests over every
    switch; a stand-in that died on TERM cut the request it had just accepted)."""
    assert SERVE in app
    return app.replace(
        SERVE,
        "if sys.argv[1] == 'fd0':\n"
        "    import signal, socket, threading, time\n"
        f"    time.sleep({warm_up})\n"
        "    while (here / 'HANG').exists():\n"
        "        time.sleep(1)\n"
        "    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler, bind_and_activate=False)\n"
        "    server.daemon_threads = False\n"
        "    server.socket = socket.socket(fileno=0)\n"
        "    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())\n"
        "    server.serve_forever()\n"
        "    server.server_close()\n"
        f"else:\n    {SERVE}\n",
    )


BUILD = """import pathlib, shutil
out = pathlib.Path(".next")
(out / "standalone").mkdir(parents=True, exist_ok=True)
(out / "standalone" / "server.js").write_text("// server")
(out / "static" / "chunks").mkdir(parents=True, exist_ok=True)
(out / "static" / "chunks" / "app.css").write_text("body{}")
"""


def git(cwd: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, env=GIT_ENV)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class AppRepo:
    """A bare remote, a developer clone that pushes, and the host's clone with the deploy worktree."""

    def __init__(self, base: Path) -> None:
        self.remote, self.dev = base / "remote.git", base / "dev"
        self.repository, self.worktree = base / "repo", base / "deploy"
        git(base, "init", "--quiet", "--bare", "-b", "develop", str(self.remote))
        git(base, "clone", "--quiet", str(self.remote), str(self.dev))
        git(self.dev, "checkout", "--quiet", "-b", "develop")
        self.write({"app.py": APP, "VERSION": "v1\n", "pyproject.toml": "[project]\nname='app'\n",
                    "apps/web/build.py": BUILD, "apps/web/public/protea-mark.png": "png",
                    "apps/web/page.txt": "page 1"})  # fmt: skip
        self.commit("v1")
        git(base, "clone", "--quiet", str(self.remote), str(self.repository))
        git(self.repository, "worktree", "add", "--quiet", "--detach", str(self.worktree), "origin/develop")

    def write(self, files: dict[str, str | None]) -> None:
        for name, text in files.items():
            path = self.dev / name
            if text is None:
                git(self.dev, "rm", "--quiet", name)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            git(self.dev, "add", name)

    def commit(self, message: str, files: dict[str, str | None] | None = None) -> str:
        self.write(files or {})
        git(self.dev, "commit", "--quiet", "-m", message)
        git(self.dev, "push", "--quiet", "origin", "HEAD:develop")
        return git(self.dev, "rev-parse", "HEAD")


def deploy_stack(
    base: Path,
    repo: AppRepo,
    queue: str,
    db_url: str = "",
    extra: dict[str, Any] | None = None,
    api_port: int = 0,
) -> Stack:
    host = base / "host"
    host.mkdir()
    env_file = host / "protea.env"
    db = db_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    env_file.write_text(f"PROTEA_DB_URL={db}\nPROTEA_AMQP_URL={AMQP}\n")
    env_file.chmod(0o600)
    api = api_port or free_port()
    python = sys.executable
    path = stack_file(
        host,
        queues={queue: {"processes": 1, "command": WORKER_COMMAND, "stop_grace": 30}},
        env_files=[str(env_file)],
        api_port=api,
        extra=deep_update(
            {
                "paths": {"root": str(repo.worktree), "logs": "{stack_dir}/logs", "run": "{stack_dir}/run"},
                "programs": {
                    "api": {"command": f"{{python}} -P app.py {api}", "directory": "{root}"},
                    "web": {"directory": "{run}/web-current"},
                    "migrate": {"directory": "{root}"},
                },
                "probes": {
                    "infra_from_env": ["PROTEA_DB_URL", "PROTEA_AMQP_URL"],
                    "api_ready_timeout": 6,
                    "web_timeout": 10,
                },
                "deploy": {
                    "repository": str(repo.repository),
                    "remote": "origin",
                    "ref": "develop",
                    "install_command": f"echo installed >> {host}/installs.log",
                    "post_install_command": f"echo post-install >> {host}/installs.log",
                    "build_command": f"{python} build.py && echo built >> {host}/builds.log",
                },
            },
            extra or {},
        ),
    )
    return Stack(path)


# The roles a compute node does not run.
SERVER_ONLY = ("migrate", "api", "web", "tunnel")


def node_stack(
    base: Path,
    checkout: Path,
    queue: str,
    db_url: str,
    follow: bool = False,
    singleton: str = "",
    stop_grace: int = 120,
) -> Stack:
    """A compute node: only the queue's worker, in its own checkout, against the server's Postgres and
    RabbitMQ (named in its env file), stopped with SIGINT and `stop_grace` (120 s, as today's node units).
    With `follow`, its deploy timer follows the server's declaration (checked every second, at each TICK_5).
    With `singleton`, it also lists that singleton queue."""
    home = base / "node"
    home.mkdir()
    env_file = home / "node.env"
    env_file.write_text(f"PROTEA_DB_URL={db_url}\nPROTEA_AMQP_URL={AMQP}\n")
    env_file.chmod(0o600)
    off = {role: {"enabled": False} for role in SERVER_ONLY}
    path = stack_file(
        home,
        queues={queue: {"processes": 1, "command": WORKER_COMMAND, "stop_grace": stop_grace}}
        | ({singleton: {"processes": 1, "command": WORKER_COMMAND, "singleton": True}} if singleton else {}),
        env_files=[str(env_file)],
        extra={
            "name": "node",
            "host": {"role": "node", "name": "gpu-1", "revision_guard": True, "heartbeat": True},
            "paths": {"root": str(checkout), "logs": "{stack_dir}/logs", "run": "{stack_dir}/run"},
            "programs": off,
            # startsecs 0: a refusal is always an exit after RUNNING, the case a slow guard makes (EXITED).
            "workers": {"stop_signal": "INT", "startsecs": 0},
            "probes": {"infra_from_env": ["PROTEA_DB_URL", "PROTEA_AMQP_URL"]},
            "deploy": {
                "enabled": follow,
                "repository": str(checkout),
                "check_interval": 1,
                "poll_interval": 5,  # a tick deferred by the server's export is tried again soon
                "retry_ladder": [1, 1],
                "install_command": f"echo installed >> {home}/installs.log",
                "post_install_command": "",
            },
        },
    )
    return Stack(path)


def serving(stack: Stack) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.api_port}/jobs", timeout=2) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError):
        return ""


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def record(stack: Stack) -> dict[str, object]:
    return json.loads((stack.root / "run" / "deployed.json").read_text())


class Poller:
    """GET `url` every 50 ms, each on its own connection; count the answers that were not a 200, the
    longest run of them, and the slowest answer (a request held in a socket's backlog fails nothing but
    waits); `pids` are the X-Api-Pid headers of the 200s, in order."""

    def __init__(self, url: str) -> None:
        self.url, self.polls, self.failed, self.longest, self.slowest = url, 0, 0, 0.0, 0.0
        self.pids: list[str] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ok(self) -> bool:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as response:
                if response.status == 200 and response.headers.get("X-Api-Pid"):
                    self.pids.append(response.headers["X-Api-Pid"])
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def _run(self) -> None:
        down_since = 0.0
        while not self._done.is_set():
            asked = time.monotonic()
            ok, now = self._ok(), time.monotonic()
            self.slowest = max(self.slowest, now - asked)
            self.polls += 1
            if ok:
                if down_since:
                    self.longest = max(self.longest, now - down_since)
                down_since = 0.0
            else:
                self.failed += 1
                down_since = down_since or now
            self._done.wait(0.05)
        if down_since:
            self.longest = max(self.longest, time.monotonic() - down_since)

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()
