"""The end-to-end stage's world: the reference app (examples/protea-app: FastAPI under uvicorn, alembic, pika
workers, a Next.js standalone build) behind a real local git remote, a host stack file layered on the shipped
PROTEA defaults, a Postgres database and a RabbitMQ vhost of its own, a job journal the workers append to,
and pollers that play the public's browsers."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import requests

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "examples" / "protea-app"
SWITCH_OVER = ROOT / "deploy" / "api-socket"
sys.path.insert(0, str(ROOT / "tests"))
from conftest import free_port, toml_dump, wait_for  # noqa: E402

PS = str(Path(sys.executable).parent / "protea-supervisor")
RABBIT_API = "http://127.0.0.1:15672/api"
GUEST = ("guest", "guest")
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"]
GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "dev",
    "GIT_AUTHOR_EMAIL": "dev@example.invalid",
    "GIT_COMMITTER_NAME": "dev",
    "GIT_COMMITTER_EMAIL": "dev@example.invalid",
}
# PROTEA's queues the stage runs (the shipped stack's others get 0 processes): a singleton, a numbered batch
# queue with two processes, and two plain ones.
QUEUES = {
    "protea.jobs": 1,
    "protea.embeddings": 1,
    "protea.embeddings.batch": 2,
    "protea.predictions.write": 1,
}
LOADED = ("protea.jobs", "protea.embeddings.batch", "protea.predictions.write")
JOB_SECONDS = 2.0


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float

    @property
    def both(self) -> str:
        return self.out + self.err


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, env=GIT_ENV)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stdout.strip()


def psql(database: str, sql: str) -> str:
    done = subprocess.run([*PSQL, "-d", database, "-c", sql], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@dataclass
class Sample:
    at: float
    ok: bool
    pid: str
    body: str
    failure: str = ""  # what a failed request met (`failure`)


def failure(error: BaseException) -> str:
    """`status N`, `reset` (the server closed the connection without an answer), `refused`, `timeout`, or
    the error's type."""
    if isinstance(error, urllib.error.HTTPError):
        return f"status {error.code}"
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError)):
        return "reset"
    if isinstance(reason, ConnectionRefusedError):
        return "refused"
    if isinstance(reason, TimeoutError):
        return "timeout"
    return type(reason).__name__


class Poller:
    """GET `url` every 50 ms, each on a connection of its own, as a browser polling the page would; keep every
    answer (ok is a 200)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[Sample] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.is_set():
            at = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=10) as answer:
                    body = answer.read().decode(errors="replace")
                    self.samples.append(
                        Sample(at, answer.status == 200, answer.headers.get("X-Api-Pid", ""), body)
                    )
            except (urllib.error.URLError, OSError, http.client.HTTPException) as failed:
                self.samples.append(Sample(at, False, "", str(failed), failure(failed)))
            self._done.wait(max(0.0, 0.05 - (time.monotonic() - at)))

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def failed(self) -> int:
        return sum(1 for s in self.samples if not s.ok)

    @property
    def gap(self) -> float:
        """The longest time from a failed answer's request to the next good one's."""
        longest, began = 0.0, None
        for sample in self.samples:
            if not sample.ok and began is None:
                began = sample.at
            elif sample.ok and began is not None:
                longest, began = max(longest, sample.at - began), None
        if began is not None:
            longest = max(longest, self.samples[-1].at - began)
        return longest

    def first(self, condition: Callable[[Sample], bool]) -> float | None:
        return next((s.at for s in self.samples if s.ok and condition(s)), None)

    def failures(self) -> Counter[str]:
        return Counter(s.failure or "not 200" for s in self.samples if not s.ok)

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(self.failures().items()))
        return f"{self.failed}/{len(self.samples)} failed ({kinds or 'none'}), longest gap {self.gap:.2f} s"


@dataclass
class Figures:
    """What one step measured."""

    step: str
    code: int = 0
    seconds: float = 0.0
    api_failed: int = 0
    api_resets: int = 0  # of api_failed: connections closed without an answer
    api_polls: int = 0
    proxy_failed: int = 0
    web_failed: int = 0
    web_polls: int = 0
    web_gap: float = 0.0
    serving_after: float | None = None
    jobs: int = 0
    cut_off: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class Stage:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.tag = f"e2e{uuid.uuid4().hex[:8]}"
        self.database, self.vhost = self.tag, self.tag
        self.remote, self.dev, self.repository = base / "remote.git", base / "dev", base / "repo"
        self.host = base / "host"
        self.worktree = self.host / "deploy"
        self.run, self.logs = self.host / "run", self.host / "logs"
        self.journal = self.host / "journal.log"
        self.ports = {name: free_port() for name in ("api", "web", "agent", "public", "metrics")}
        self.published: list[str] = []
        self.figures: list[Figures] = []
        self.amqp = f"amqp://guest:guest@127.0.0.1:5672/{self.vhost}"
        self.stack: dict[str, Any] = {}

    # --- the world ------------------------------------------------------------------------------------

    def create(self) -> None:
        requests.put(f"{RABBIT_API}/vhosts/{self.vhost}", auth=GUEST, timeout=10).raise_for_status()
        requests.put(
            f"{RABBIT_API}/permissions/{self.vhost}/guest",
            json={"configure": ".*", "write": ".*", "read": ".*"},
            auth=GUEST,
            timeout=10,
        ).raise_for_status()
        psql("postgres", f"CREATE DATABASE {self.database}")
        git(self.base, "init", "--quiet", "--bare", "-b", "develop", str(self.remote))
        shutil.copytree(
            APP, self.dev, ignore=shutil.ignore_patterns(".venv", "node_modules", ".next", "__pycache__")
        )
        git(self.dev, "init", "--quiet", "-b", "develop")
        git(self.dev, "remote", "add", "origin", str(self.remote))
        self.commit("the reference app, as PROTEA runs today")
        # The host: a clone of the repository (deploy.repository); the first `up` makes the worktree.
        git(self.base, "clone", "--quiet", str(self.remote), str(self.repository))
        self.host.mkdir()
        env_file = self.host / "protea.env"
        env_file.write_text(
            f"PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/{self.database}\n"
            f"PROTEA_AMQP_URL={self.amqp}\n"
            "PROTEA_AUTHN_REQUIRED=false\n"
            # Next resolves the /api-proxy rewrite at `next build`: the API's address goes to the build.
            f"PROTEA_API_URL=http://127.0.0.1:{self.ports['api']}\n"
            "NEXT_TELEMETRY_DISABLED=1\n"
            f"PROTEA_JOB_JOURNAL={self.journal}\n"
        )
        env_file.chmod(0o600)
        self.stack = self.stack_settings(env_file)
        self.write_stack()

    def stack_settings(self, env_file: Path) -> dict[str, Any]:
        """The host file: only what differs from the shipped PROTEA stack (paths, ports, queues in use)."""
        p = self.ports
        return {
            "name": "e2e",
            "paths": {"root": "{stack_dir}/deploy", "logs": "{stack_dir}/logs", "run": "{stack_dir}/run"},
            "env": {"files": [str(env_file)]},
            "programs": {
                "api": {
                    "command": "{venv}/bin/uvicorn protea.api.app:create_app --factory "
                    f"--host 127.0.0.1 --port {p['api']} --root-path /api-proxy"
                },
                "web": {
                    "directory": "{run}/web-current",
                    "environment": {"PORT": str(p["web"]), "HOSTNAME": "127.0.0.1"},
                },
                # ngrok needs the internet: the demo's stand-in plays it, forwarding to web as ngrok does.
                "tunnel": {
                    "command": f"{{python}} -P -m protea_supervisor.demo.tunnel --agent-port {p['agent']} "
                    f"--public-port {p['public']} --public-url http://127.0.0.1:{p['public']}/ "
                    f"--addr http://127.0.0.1:{p['web']} --forward"
                },
            },
            "workers": {"stop_grace": 60, "startsecs": 2},
            "queues": {
                name: {"processes": 0}
                for name in tomllib.loads((ROOT / "protea_supervisor/stacks/protea.toml").read_text())[
                    "queues"
                ]
            }
            | {name: {"processes": count} for name, count in QUEUES.items()},
            "probes": {
                "api_ready_url": f"http://127.0.0.1:{p['api']}/jobs",
                "api_ready_timeout": 30,
                "web_url": f"http://127.0.0.1:{p['web']}/",
                "web_timeout": 30,
                "public_url": f"http://127.0.0.1:{p['public']}/",
                "ngrok_api_url": f"http://127.0.0.1:{p['agent']}/api/tunnels",
                "infra_timeout": 30,
            },
            "deploy": {
                "repository": str(self.repository),
                # The stage ticks by hand; the timer's own clock is pushed out of the way.
                "check_interval": 0,
                "poll_interval": 86400,
                "jitter": 0,
                "lock_files": ["pyproject.toml", "requirements.lock"],
                "install_command": "test -x {venv}/bin/python || {python} -m venv {venv}; "
                "{venv}/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "
                "-r requirements.lock",
                "build_command": "npm ci --no-audit --no-fund --prefer-offline && npm run build",
            },
            "metrics": {"port": p["metrics"]},
            "monitor": {"rabbit_api": "http://127.0.0.1:15672"},
            "backup": {
                "dir": "{stack_dir}/backups",
                "min_free_gb": 1,
                "extensions": [],
                "check_tables": [],
                "min_tables": 2,
                "jobs": 2,
            },
            "lock": {"file": "{stack_dir}/stack-owner.json"},
        }

    def write_stack(self) -> None:
        staged = self.host / ".stack.toml.tmp"
        staged.write_text(toml_dump(self.stack) + "\n")
        staged.replace(self.host / "stack.toml")

    def destroy(self) -> None:
        self.ps("down", "--force", bound=180)
        with contextlib.suppress(requests.RequestException):
            requests.delete(f"{RABBIT_API}/vhosts/{self.vhost}", auth=GUEST, timeout=10)
        names = psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{self.database}%'")
        for name in names.split():
            psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    # --- the operator's commands and the developer's commits --------------------------------------------

    def ps(self, *args: str, bound: float = 600) -> Result:
        env = {k: v for k, v in os.environ.items() if k not in ("PROTEA_STACK", "PROTEA_DEBUG")}
        began = time.monotonic()
        done = subprocess.run(
            [PS, "--stack", str(self.host / "stack.toml"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=bound,
            check=False,
        )
        return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - began)

    def commit(self, message: str, files: dict[str, str | None] | None = None) -> str:
        for name, text in (files or {}).items():
            if text is None:
                git(self.dev, "rm", "--quiet", name)
                continue
            (self.dev / name).parent.mkdir(parents=True, exist_ok=True)
            (self.dev / name).write_text(text)
        git(self.dev, "add", "--all")
        git(self.dev, "commit", "--quiet", "-m", message)
        git(self.dev, "push", "--quiet", "origin", "HEAD:develop")
        return git(self.dev, "rev-parse", "HEAD")

    def app_file(self, name: str) -> str:
        return (self.dev / name).read_text()

    # --- what serves ------------------------------------------------------------------------------------

    def url(self, what: str) -> str:
        p = self.ports
        return {
            "api": f"http://127.0.0.1:{p['api']}/jobs",
            "proxy": f"http://127.0.0.1:{p['web']}/api-proxy/jobs/",
            "web": f"http://127.0.0.1:{p['web']}/",
            "public": f"http://127.0.0.1:{p['public']}/",
        }[what]

    def api(self) -> tuple[dict[str, Any], str]:
        """The API's answer and the pid that sent it."""
        with urllib.request.urlopen(self.url("api"), timeout=10) as answer:
            return json.loads(answer.read()), answer.headers.get("X-Api-Pid", "")

    def page(self, what: str = "web") -> str:
        with urllib.request.urlopen(self.url(what), timeout=10) as answer:
            return str(answer.read().decode())

    def status(self) -> dict[str, Any]:
        result = self.ps("status", "--json")
        assert result.code == 0, result.both
        return dict(json.loads(result.out))

    def pids(self) -> dict[str, int]:
        return {p["name"]: p["pid"] for p in self.status()["processes"] if p["state"] == "RUNNING"}

    def deploys(self) -> list[dict[str, Any]]:
        result = self.ps("deploys", "--json")
        assert result.code == 0, result.both
        return list(json.loads(result.out))

    def schema(self) -> str:
        return psql(self.database, "SELECT version_num FROM alembic_version")

    # --- jobs ---------------------------------------------------------------------------------------------

    def publish(self, per_queue: int = 3, queues: tuple[str, ...] = LOADED) -> list[str]:
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp))
        channel = connection.channel()
        ids = []
        for queue in queues:
            channel.queue_declare(queue, durable=True)
            for _ in range(per_queue):
                job = f"{queue}/{uuid.uuid4().hex[:8]}"
                body = json.dumps({"job_id": job, "seconds": JOB_SECONDS})
                channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
                ids.append(job)
        connection.close()
        self.published += ids
        return ids

    def entries(self) -> list[list[str]]:
        text = self.journal.read_text() if self.journal.exists() else ""
        return [line.split() for line in text.splitlines()]

    def started(self, ids: list[str]) -> set[str]:
        wanted = set(ids)
        return {e[1] for e in self.entries() if e[0] == "start" and e[1] in wanted}

    def done(self) -> Counter[str]:
        return Counter(e[1] for e in self.entries() if e[0] == "done")

    def wait_jobs(self, ids: list[str], deadline: float = 120) -> None:
        wait_for(lambda: all(self.done()[job] for job in ids), deadline, f"{len(ids)} jobs done")

    def cut_off(self) -> list[str]:
        """Jobs that did not run exactly once from start to finish in one process: started twice (cut off
        and redelivered), or started by one pid and done by none or another."""
        starts: dict[str, list[str]] = {}
        dones: dict[str, list[str]] = {}
        for event, job, _queue, pid, _revision in self.entries():
            (starts if event == "start" else dones).setdefault(job, []).append(pid)
        return sorted(job for job, pids in starts.items() if len(pids) != 1 or dones.get(job) != pids)

    def revisions_of_jobs(self, ids: list[str]) -> set[str]:
        wanted = set(ids)
        return {e[4] for e in self.entries() if e[0] == "start" and e[1] in wanted}

    def ready_messages(self, queue: str) -> int:
        """The broker's count of messages waiting in `queue`, exact (the management API's lags by seconds)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.amqp))
        try:
            return int(connection.channel().queue_declare(queue, passive=True).method.message_count)
        finally:
            connection.close()

    # --- a step under load --------------------------------------------------------------------------------

    def up_to_the_public_page(self, step: str) -> None:
        """`up`, with the public page polled from the command's start: the figure is when it first served."""
        with Poller(self.url("public")) as public:
            up = self.ps("up")
            assert up.code == 0, up.both
            wait_for(lambda: public.first(lambda s: "PROTEA" in s.body), 30, "the public page")
        served = public.first(lambda s: "PROTEA" in s.body)
        assert served is not None
        after = served - public.samples[0].at
        self.figures.append(Figures(step=step, code=up.code, seconds=up.seconds, serving_after=after))

    def next_start(self) -> float:
        """Next.js's own start: the served build's `node .next/standalone/server.js` started by hand on a
        port of its own, to its first 200 (its `Ready in` line says 0ms: it counts from after loading)."""
        port = free_port()
        build = (self.run / "web-current").resolve()
        began = time.monotonic()
        node = subprocess.Popen(
            ["node", ".next/standalone/server.js"],
            cwd=build,
            env={**os.environ, "PORT": str(port), "HOSTNAME": "127.0.0.1", "NODE_ENV": "production"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as answer:
                    return bool(answer.status == 200)
            except OSError:
                return False

        try:
            wait_for(answers, 30, "a Next.js server started by hand", interval=0.01)
            return time.monotonic() - began
        finally:
            node.terminate()
            node.wait()

    def under_load(
        self, step: str, *command: str, new_revision: str = "", new_page: str = ""
    ) -> tuple[Result, Figures]:
        """Publish jobs on several queues, wait until one is in hand, then run `command` while the API, the
        API through the frontend's /api-proxy rewrite and the web page are each polled every 50 ms (and a
        few polls after it ends); then wait for every job. `new_revision` and `new_page`: when the API first
        answered with that revision and the page first showed that text, from the command's start."""
        ids = self.publish()
        wait_for(lambda: self.started(ids), 30, "a job in hand")
        with (
            Poller(self.url("api")) as api,
            Poller(self.url("proxy")) as proxy,
            Poller(self.url("web")) as web,
        ):
            began = time.monotonic()
            result = self.ps(*command)
            after = len(api.samples)
            wait_for(lambda: len(api.samples) > after + 4, 10, "the pollers to answer after the step")
        self.wait_jobs(ids)
        serving = api.first(lambda s: f'"revision":"{new_revision}"' in s.body) if new_revision else None
        shown = web.first(lambda s: new_page in s.body) if new_page else None
        extra: dict[str, Any] = {"api": api.summary(), "proxy": proxy.summary(), "web": web.summary()}
        if shown is not None:
            extra["page_after"] = round(shown - began, 2)
        figures = Figures(
            step=step,
            code=result.code,
            seconds=result.seconds,
            api_failed=api.failed,
            api_resets=api.failures()["reset"],
            api_polls=len(api.samples),
            proxy_failed=proxy.failed,
            web_failed=web.failed,
            web_polls=len(web.samples),
            web_gap=web.gap,
            serving_after=None if serving is None else serving - began,
            jobs=len(ids),
            cut_off=len([job for job in self.cut_off() if job in set(ids)]),
            extra=extra,
        )
        self.figures.append(figures)
        return result, figures
