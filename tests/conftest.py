"""Shared helpers: the real console script, free loopback ports, short temp dirs, test stack files."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], object], deadline: float, what: str, interval: float = 0.1) -> object:
    """Poll `condition` until it is truthy; fail naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short temp dir: unix socket paths must stay under ~100 bytes."""
    path = Path(tempfile.mkdtemp(prefix="ps-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def stack_file(
    root: Path,
    *,
    queues: dict[str, dict[str, object]] | None = None,
    api_ready_after: float = 0.5,
    job_seconds: float = 2.0,
    worker_grace: int = 60,
    migrate_exit: int = 0,
    extra: str = "",
    env_files: list[str] | None = None,
    required: list[str] | None = None,
) -> Path:
    """A host stack file that runs the demo stand-ins on free ports, rooted in `root`."""
    queues = queues if queues is not None else {"protea.ping": {}, "protea.jobs": {}}
    api, web, agent = free_port(), free_port(), free_port()
    lines = [
        'name = "test"',
        "[paths]",
        'root = "{stack_dir}"',
        'venv = "{root}"',
        'logs = "{root}/logs"',
        'run = "{root}/run"',
        "[env]",
        f"files = [{', '.join(toml_str(f) for f in (env_files or []))}]",
        f"required = [{', '.join(toml_str(r) for r in (required or []))}]",
        "require_jwt_secret = false",
        "[programs.migrate]",
        f'command = "{{python}} -P -m protea_supervisor.demo.migrate --seconds 0.2 --exit-code {migrate_exit}"',
        "[programs.api]",
        f'command = "{{python}} -P -m protea_supervisor.demo.api --port {api} --ready-after {api_ready_after}"',
        "[programs.web]",
        'command = "{python} -P -m protea_supervisor.demo.web"',
        'directory = "{root}"',
        'requires_file = ""',
        'fallback_command = ""',
        "[programs.web.environment]",
        f'PORT = "{web}"',
        "[programs.tunnel]",
        f'command = "{{python}} -P -m protea_supervisor.demo.tunnel --agent-port {agent} '
        f'--public-url http://127.0.0.1:{web}"',
        "[workers]",
        f'command = "{{python}} -P -m protea_supervisor.demo.worker --queue {{queue}} --job-seconds {job_seconds}"',
        f"stop_grace = {worker_grace}",
        "startsecs = 1",
        "[probes]",
        f'api_ready_url = "http://127.0.0.1:{api}/jobs"',
        f'web_url = "http://127.0.0.1:{web}"',
        'public_url = ""',
        f'ngrok_api_url = "http://127.0.0.1:{agent}/api/tunnels"',
        "infra_from_env = []",
        "[lock]",
        'file = "{root}/stack-owner.json"',
        "flock_timeout = 1",
    ]
    for name in DEFAULT_QUEUES:
        if name not in queues:
            lines += [f'[queues."{name}"]', "processes = 0"]
    for name, settings in queues.items():
        lines.append(f'[queues."{name}"]')
        for key, value in settings.items():
            rendered = toml_str(value) if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {rendered}")
    path = root / "stack.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path
