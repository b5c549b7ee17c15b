"""Shared helpers: the real console script, free loopback ports, short temp dirs, test stack files."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from xprocess import ProcessStarter

BIN = Path(sys.executable).parent
PS = str(BIN / "protea-supervisor")
DEFAULT_QUEUES = (
    "protea.ping",
    "protea.jobs",
    "protea.training",
    "protea.embeddings",
    "protea.embeddings.batch",
    "protea.embeddings.write",
    "protea.predictions",
    "protea.predictions.batch",
    "protea.predictions.write",
    "protea.evaluations",
    "reaper",
)


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def both(self) -> str:
        return self.out + self.err


def ps(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120, cwd: Path | None = None
) -> Result:
    """Run the installed protea-supervisor script, as an operator would."""
    full_env = dict(os.environ)
    full_env.pop("PROTEA_STACK", None)
    full_env.pop("STACK_OWNER_FILE", None)
    full_env.pop("STACK_OWNER_FLOCK_TIMEOUT_SEC", None)
    if env:
        full_env.update(env)
    done = subprocess.run(
        [PS, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=cwd, check=False
    )
    return Result(done.returncode, done.stdout, done.stderr)


_handed_out: set[int] = set()


def free_port() -> int:
    """A loopback port nobody listens on, never handed out twice in this run. Ports come from a range of this
    pytest-xdist worker's own, below the kernel's ephemeral range (32768+), so neither another worker nor an
    outgoing connection (which the kernel gives an ephemeral port) can take it before the test binds it.
    PROTEA_TEST_PORT_BASE (default 20000) moves the ranges, for a second run beside this one (a long run of
    the generated sequences beside the suite: `PROTEA_TEST_PORT_BASE=8000`)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    base = int(os.environ.get("PROTEA_TEST_PORT_BASE", "20000"))
    low = base + (int(worker) % 8) * 1500 if worker.isdigit() else base
    candidates = list(range(low, low + 1500))
    random.shuffle(candidates)
    for port in candidates:
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {low}-{low + 1499}")


def wait_for(condition: Callable[[], object], deadline: float, what: str, interval: float = 0.1) -> object:
    """Poll `condition` until it is truthy; fail naming `what` after `deadline` seconds. A condition that
    starts the CLI (about 0.3 s of CPU) waits as long as it took before it is asked again: polled back to back,
    a few waiting tests kept both cores busy and slowed every other test."""
    end = time.monotonic() + deadline
    while True:
        asked = time.monotonic()
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(max(interval, min(now - asked, 1.0)))


SHIFT = Path(__file__).parent / "clockshift"


class Clock:
    """The stack's wall clock: an offset from this machine's, in seconds (tests/clockshift)."""

    def __init__(self, root: Path) -> None:
        self.file = root / "clock-offset"
        self.offset = 0
        self.file.write_text("0\n")

    def environ(self) -> dict[str, str]:
        path = os.pathsep.join(p for p in (str(SHIFT), os.environ.get("PYTHONPATH", "")) if p)
        return {"PYTHONPATH": path, "PROTEA_TEST_CLOCK_FILE": str(self.file)}

    def step(self, seconds: int) -> None:
        self.offset += seconds
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(f"{self.offset}\n")
        os.replace(tmp, self.file)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ps-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    # JSON's escapes are TOML's (non-ASCII kept as is, so no surrogate pairs); TOML also wants DEL escaped.
    return json.dumps(str(value), ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_dump(data: dict[str, Any], prefix: str = "") -> str:
    """Enough TOML for test stack files: scalars first, then one [table] per nested dict."""
    scalars = [f"{key} = {toml_value(v)}" for key, v in data.items() if not isinstance(v, dict)]
    has_tables = any(isinstance(v, dict) for v in data.values())
    out = ([f"[{prefix}]"] if prefix and (scalars or not has_tables) else []) + scalars
    for key, value in data.items():
        if isinstance(value, dict):
            name = f'"{key}"' if "." in key else key
            out.append(toml_dump(value, f"{prefix}.{name}" if prefix else name))
    return "\n".join(line for line in out if line)


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def stack_file(
    root: Path,
    *,
    queues: dict[str, dict[str, object]] | None = None,
    api_ready_after: float = 0.5,
    job_seconds: float = 2.0,
    worker_grace: int = 60,
    migrate_exit: int = 0,
    extra: dict[str, Any] | None = None,
    env_files: list[str] | None = None,
    required: list[str] | None = None,
    api_port: int | None = None,
) -> Path:
    """A host stack file that runs the demo stand-ins on free ports, rooted in `root`."""
    queues = queues if queues is not None else {"protea.ping": {}, "protea.jobs": {}}
    api, web, agent, public = api_port or free_port(), free_port(), free_port(), free_port()
    stand_in = "{python} -P -m protea_supervisor.demo."
    data: dict[str, Any] = {
        "name": "test",
        "paths": {"root": "{stack_dir}", "venv": "{root}", "logs": "{root}/logs", "run": "{root}/run"},
        "env": {"files": env_files or [], "required": required or [], "require_jwt_secret": False},
        "programs": {
            "migrate": {"command": f"{stand_in}migrate --seconds 0.2 --exit-code {migrate_exit}"},
            "api": {"command": f"{stand_in}api --port {api} --ready-after {api_ready_after}"},
            "web": {
                "command": f"{stand_in}web",
                "directory": "{root}",
                "requires_file": "",
                "fallback_command": "",
                "environment": {"PORT": str(web)},
            },
            "tunnel": {
                "command": f"{stand_in}tunnel --agent-port {agent} --public-port {public} "
                f"--public-url http://127.0.0.1:{public}/ --control {{root}}/tunnel-control"
            },
        },
        "workers": {
            "command": f"{stand_in}worker --queue {{queue}} --job-seconds {job_seconds}",
            "stop_grace": worker_grace,
            "startsecs": 1,
        },
        "queues": {name: {"processes": 0} for name in DEFAULT_QUEUES if name not in queues}
        | {name: dict(settings) for name, settings in queues.items()},
        "probes": {
            "api_ready_url": f"http://127.0.0.1:{api}/jobs",
            "web_url": f"http://127.0.0.1:{web}",
            "public_url": f"http://127.0.0.1:{public}/",
            "ngrok_api_url": f"http://127.0.0.1:{agent}/api/tunnels",
            "infra_from_env": [],
        },
        "lock": {"file": "{root}/stack-owner.json", "flock_timeout": 1},
        "deploy": {"enabled": False},
        "metrics": {"enabled": False},
    }
    deep_update(data, extra or {})
    path = root / "stack.toml"
    path.write_text(toml_dump(data) + "\n")
    return path


class Stack:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.root = file.parent
        self.conf = self.root / "run" / "supervisord.conf"
        self.logs = self.root / "logs"

    def ps(self, *args: str, **kwargs: Any) -> Any:
        return ps("--stack", str(self.file), *args, **kwargs)

    def status(self) -> dict[str, dict[str, Any]]:
        result = self.ps("status", "--json")
        assert result.code == 0, result.both
        return {p["name"]: p for p in json.loads(result.out)["processes"]}

    @property
    def api_port(self) -> int:
        url = tomllib.loads(self.file.read_text())["probes"]["api_ready_url"]
        return int(urlsplit(url).port or 0)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def supervisord(xprocess: Any, request: pytest.FixtureRequest) -> Iterator[Callable[[Stack], None]]:
    """Start supervisord in the foreground under xprocess for a rendered stack; always torn down."""
    names: list[str] = []
    sockets: list[Path] = []

    def start(stack: Stack) -> None:
        sockets.append(stack.conf.parent / "supervisor.sock")
        rendered = stack.ps("render")
        assert rendered.code == 0, rendered.both

        class Starter(ProcessStarter):  # type: ignore[misc]
            pattern = "supervisord started with pid"
            args = (sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(stack.conf))
            timeout = 30
            terminate_on_interrupt = True

        name = f"supervisord-{request.node.name}-{len(names)}"
        names.append(name)
        xprocess.ensure(name, Starter)

    yield start
    for name in names:
        xprocess.getinfo(name).terminate()
    # A program started in the moment supervisord was torn down (the watchdog restarting the tunnel) is not
    # in the process tree xprocess collected: every process with one of these stacks' marks goes too.
    from protea_supervisor.supervisord import orphans

    for socket_path in sockets:
        for orphan in orphans.find(socket_path, None):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(orphan.pgid, signal.SIGKILL)
    # A supervisord that `up` daemonized for one of these stacks (it carries no mark of its own) goes too.
    configs = {str(path.parent / "supervisord.conf") for path in sockets}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"supervisor.supervisord" in argv and any(a.decode(errors="replace") in configs for a in argv):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)


def psql(database: str, sql: str) -> str:
    """One statement on this machine's Postgres as postgres, its rows as text."""
    argv = ["psql", "-X", "-q", "-tA", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c", sql]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def database() -> Iterator[str]:
    """A database of this test's own on this machine's Postgres, as a URL (the server's database of a
    two-host test: declarations, heartbeats and singleton locks live in it); dropped afterwards."""
    name = f"pst_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A queue name of this test's own on this machine's RabbitMQ, deleted afterwards."""
    from rabbit import delete_queue

    name = f"test.{request.node.name[5:20].replace('_', '-')}.{uuid.uuid4().hex[:8]}"
    yield name
    delete_queue(name)


DURATIONS = "protea/durations"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests start first, one at the head of each xdist worker's share (`--dist worksteal` splits
    the collection into equal contiguous shares and steals from their tails): started last, they would run
    on alone at the end. The slow ones go longest first by the durations the last run recorded in pytest's
    cache (in collection order on a fresh clone). Deterministic, so every worker collects the same order."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    known: dict[str, float] = config.cache.get(DURATIONS, {}) if config.cache else {}
    slow = sorted(
        (item for item in items if item.get_closest_marker("slow")),
        key=lambda item: -known.get(item.nodeid, 0.0),
    )
    rest = [item for item in items if not item.get_closest_marker("slow")]
    shares: list[list[pytest.Item]] = [[] for _ in range(workers)]
    for n, item in enumerate(slow):
        shares[n % workers].append(item)
    size = -(-len(items) // workers)
    for share in shares:
        while len(share) < size and rest:
            share.append(rest.pop(0))
    items[:] = [item for share in shares for item in share] + rest


_durations: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each test's duration (under xdist the controller sees every worker's reports)."""
    if report.when == "call":
        _durations[report.nodeid] = report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller (or a run without xdist) keeps the durations for the next run's order."""
    if _durations and session.config.cache and not hasattr(session.config, "workerinput"):
        session.config.cache.set(DURATIONS, {**session.config.cache.get(DURATIONS, {}), **_durations})


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("protea-supervisor")
    group.addoption(
        "--sequence-steps",
        default="",
        help="steps of the generated command sequence tests (16 on one host, 8 on two)",
    )
    group.addoption(
        "--sequence-seed", default="13", help="seed of the generated command sequence tests (several: 3,4,6)"
    )
    group.addoption(
        "--sequence-long",
        action="store_true",
        help="the long run: 200 steps on each of seeds 1-5 (1000 steps, faults included), one test per seed, on one host and on two",
    )
    group.addoption(
        "--hypothesis-long", action="store_true", help="tens of thousands of generated stack files"
    )
