"""Stack files for the benchmarks: the demo stand-ins on free loopback ports, rooted in a temp dir."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

BIN = Path(sys.executable).parent
PS = str(BIN / "protea-supervisor")
STAND_IN = "{python} -P -m protea_supervisor.demo."
ALL_QUEUES = (
    "protea.ping", "protea.jobs", "protea.training", "protea.embeddings", "protea.embeddings.batch",
    "protea.embeddings.write", "protea.predictions", "protea.predictions.batch", "protea.predictions.write",
    "protea.evaluations", "reaper",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stack_file(root: Path, *, queues: Iterable[str] = ALL_QUEUES, job_seconds: float = 3.0,
               api_port: int = 0, web_port: int = 0, agent_port: int = 0, api_ready_after: float = 2.0,
               programs: bool = True, worker_args: str = "", public_port: int = 0,
               worker_startsecs: int = 1) -> Path:  # fmt: skip
    """The demo stack (all 11 queues by default); `programs=False` leaves only the workers."""
    wanted = set(queues)
    # PROTEA's shipped protea.embeddings is a singleton queue: its worker's start takes a lock in Postgres.
    env_file = root / "bench.env"
    env_file.write_text("PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/postgres\n")
    env_file.chmod(0o600)
    tunnel_public = (
        f"--public-port {public_port} --public-url http://127.0.0.1:{public_port}/ "
        "--control {root}/tunnel-control"
        if public_port
        else f"--public-url http://127.0.0.1:{web_port}"
    )
    lines = [
        'name = "bench"',
        "[paths]",
        'root = "{stack_dir}"',
        'run = "{root}/run"',
        'logs = "{root}/logs"',
        "[env]",
        f'files = ["{env_file}"]',
        "required = []",
        "require_jwt_secret = false",
        "[workers]",
        f'command = "{STAND_IN}worker --queue {{queue}} --job-seconds {job_seconds} {worker_args}"',
        f"stop_grace = {int(job_seconds) + 30}",
        f"startsecs = {worker_startsecs}",
        "[probes]",
        "infra_from_env = []",
        f'public_url = "{f"http://127.0.0.1:{public_port}/" if public_port else ""}"',
        f'ngrok_api_url = "http://127.0.0.1:{agent_port or 1}/api/tunnels"',
        f'api_ready_url = "http://127.0.0.1:{api_port or 1}/jobs"',
        f'web_url = "http://127.0.0.1:{web_port or 1}"',
        "[lock]",
        'file = "{root}/stack-owner.json"',
        "[deploy]",
        "enabled = false",
        "[metrics]",
        "enabled = false",
    ]
    if programs:
        lines += [
            "[programs.migrate]", f'command = "{STAND_IN}migrate --seconds 0.5"',
            "[programs.api]", f'command = "{STAND_IN}api --port {api_port} --ready-after {api_ready_after}"',
            "[programs.web]", f'command = "{STAND_IN}web --port {web_port}"', 'directory = "{root}"',
            'requires_file = ""', 'fallback_command = ""',
            "[programs.tunnel]",
            f'command = "{STAND_IN}tunnel --agent-port {agent_port} {tunnel_public}"',
        ]  # fmt: skip
    else:
        for role in ("migrate", "api", "web", "tunnel"):
            lines += [f"[programs.{role}]", "enabled = false"]
    for name in ALL_QUEUES:
        lines.append(f'[queues."{name}"]')
        if name not in wanted:
            lines.append("processes = 0")
    path = root / "stack.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def ps(stack: Path, *args: str) -> str:
    return subprocess.run(
        [PS, "--stack", str(stack), *args], check=True, capture_output=True, text=True
    ).stdout


def wait(condition: Callable[[], object], seconds: float, what: str) -> None:
    """Poll `condition` every 50 ms; end the bench, naming `what`, when it does not hold within `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: {what} within {seconds:g} s did not happen")
        time.sleep(0.05)
