"""`protea-supervisor tick` on a real supervisord, with a real local git remote and a small app repo.

The app's API stand-in serves its VERSION file (500 when a BROKEN file exists); `apps/web` has a build
script that makes a Next.js-shaped standalone build; `pyproject.toml` is the dependency file. Prerequisites
are this machine's real Postgres and RabbitMQ.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, stack_file, wait_for

pytestmark = pytest.mark.integration
AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
WORKER = Path(__file__).parent.parent / "fixtures" / "rabbit_worker.py"
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
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
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


@pytest.fixture
def queue_name() -> Iterator[str]:
    name = f"test.deploy.{uuid.uuid4().hex[:8]}"
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    connection.channel().queue_delete(name)
    connection.close()


def deploy_stack(base: Path, repo: AppRepo, queue: str, db_url: str = "") -> Stack:
    host = base / "host"
    host.mkdir()
    env_file = host / "protea.env"
    db = db_url or "postgresql://postgres@127.0.0.1:5432/postgres"
    env_file.write_text(f"PROTEA_DB_URL={db}\nPROTEA_AMQP_URL={AMQP}\n")
    env_file.chmod(0o600)
    api = free_port()
    python = sys.executable
    worker = f"{{python}} -P {WORKER} --queue {{queue}} --record {host}/acks.log"
    path = stack_file(
        host,
        queues={queue: {"processes": 1, "command": worker, "stop_grace": 30}},
        env_files=[str(env_file)],
        api_port=api,
        extra={
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


def publish(queue: str, jobs: int, seconds: float) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP))
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    for job in range(jobs):
        channel.basic_publish("", queue, json.dumps({"id": job, "seconds": seconds}).encode())
    connection.close()


def test_new_commits_are_deployed_installing_and_building_only_when_needed(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = deploy_stack(short_tmp, repo, queue_name)
    installs, builds = stack.root / "installs.log", stack.root / "builds.log"
    supervisord(stack)
    first = stack.ps("tick")
    assert first.code == 10, first.both
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    assert serving(stack) == f"v1 {rev1}"
    assert (
        lines(installs) == 2 and lines(builds) == 1
    )  # a first deploy installs (and post-installs) and builds
    assert "tick exit=10 redeployed" in (stack.logs / "deploy-tick.log").read_text()
    assert stack.ps("tick").code == 0  # on the head and healthy: nothing to do
    served = os.readlink(stack.root / "run" / "web-current")

    # An API-only commit: no install, no build; the worker finishes the job it has in hand.
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    dry = stack.ps("tick", "--dry-run")
    assert dry.code == 0 and "install: no; frontend build: no" in dry.out, dry.both
    assert serving(stack) == f"v1 {rev1}"
    program = "worker-" + queue_name.replace(".", "-")
    publish(queue_name, 4, seconds=2.0)
    wait_for(lambda: "started" in stack.log(program), 20, "a job in flight")
    second = stack.ps("tick")
    assert second.code == 10, second.both
    assert serving(stack) == f"v2 {rev2}"
    assert lines(installs) == 2 and lines(builds) == 1
    assert os.readlink(stack.root / "run" / "web-current") == served
    assert "done after TERM" in stack.log(program)
    wait_for(lambda: lines(stack.root / "acks.log") >= 4, 60, "all jobs acked")
    acked = collections.Counter(int(x.split()[0]) for x in (stack.root / "acks.log").read_text().splitlines())
    assert sorted(acked) == [0, 1, 2, 3] and set(acked.values()) == {1}

    # Dependencies and the frontend change: install, then a fresh build is switched in.
    rev3 = repo.commit(
        "v3", {"pyproject.toml": "[project]\nname='app'\nversion='3'\n", "apps/web/page.txt": "2"}
    )
    third = stack.ps("tick")
    assert third.code == 10, third.both
    assert lines(installs) == 4 and lines(builds) == 2
    now_served = os.readlink(stack.root / "run" / "web-current")
    assert now_served != served and Path(now_served, ".next/standalone/public/protea-mark.png").exists()
    doc = record(stack)
    assert doc["revision"] == rev3 and doc["previous"] == rev2 and doc["last_exit"] == 10
    status = stack.ps("status")
    assert f"deployed {rev3[:10]}" in status.out, status.out


def test_a_broken_commit_is_rolled_back_and_skipped_until_a_newer_one(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = deploy_stack(short_tmp, repo, queue_name)
    supervisord(stack)
    assert stack.ps("tick").code == 10
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    bad = repo.commit("broken", {"BROKEN": "yes", "VERSION": "v2\n"})
    failed = stack.ps("tick")
    assert failed.code == 20, failed.both
    assert serving(stack) == f"v1 {rev1}"  # the previous revision serves again
    assert git(repo.worktree, "rev-parse", "HEAD") == rev1
    assert bad in record(stack)["failed"]
    again = stack.ps("tick")
    assert again.code == 0 and "failed before" in again.out, again.both
    assert serving(stack) == f"v1 {rev1}"
    fixed = repo.commit("fixed", {"BROKEN": None, "VERSION": "v3\n"})
    assert stack.ps("tick").code == 10
    assert serving(stack) == f"v3 {fixed}"


def test_an_export_defers_the_tick_and_nothing_restarts(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = deploy_stack(short_tmp, repo, queue_name)
    supervisord(stack)
    assert stack.ps("tick").code == 10
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}
    repo.commit("v2", {"VERSION": "v2\n"})
    assert stack.ps("lock", "acquire", "export", "exp-42", "multi-day export").code == 0
    deferred = stack.ps("tick")
    assert deferred.code == 0, deferred.both
    assert "deferred: stack owned by export task exp-42 since" in (stack.logs / "deploy-tick.log").read_text()
    assert {n: p["pid"] for n, p in stack.status().items() if p["pid"]} == before
    assert serving(stack).startswith("v1 ")


def test_prerequisites_down_exit_40_naming_the_one_that_failed(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    closed = free_port()
    stack = deploy_stack(
        short_tmp, repo, queue_name, db_url=f"postgresql://postgres:s3cret@127.0.0.1:{closed}/x"
    )
    supervisord(stack)
    result = stack.ps("tick")
    assert result.code == 40, result.both
    assert f"127.0.0.1:{closed} (PROTEA_DB_URL)" in result.out and "s3cret" not in result.out
    assert git(repo.worktree, "rev-parse", "HEAD") == git(repo.dev, "rev-parse", "HEAD")


def test_a_vanished_worktree_is_recreated(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str
) -> None:
    repo = AppRepo(short_tmp)
    stack = deploy_stack(short_tmp, repo, queue_name)
    supervisord(stack)
    assert stack.ps("tick").code == 10
    rev2 = repo.commit("v2", {"VERSION": "v2\n"})
    subprocess.run(["rm", "-rf", str(repo.worktree)], check=True)
    result = stack.ps("tick")
    assert result.code == 10, result.both
    assert "recreating it" in result.out and serving(stack) == f"v2 {rev2}"
