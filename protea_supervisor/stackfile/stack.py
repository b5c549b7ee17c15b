"""The stack description: typed records. `parser.py` builds them from TOML layers (the shipped PROTEA
default overlaid by host files), with `schema.py` (keys, types, bounds) and `placeholders.py`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile.host import HostSettings
from protea_supervisor.stackfile.schema import ROLES, key_parts, quoted

__all__ = ["ROLES", "quoted"]
STOP_SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2")
# Names that say "this is a secret": such values belong in an env file, never in the rendered config.
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|_KEY$|^KEY$|CREDENTIAL", re.IGNORECASE)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PROGRAM_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
# Processes per queue. Each worker is a Python process holding its model and connections (PROTEA's use
# hundreds of MB), and supervisord's getAllProcessInfo grows with the count (75 ms at 200).
MAX_PROCESSES = 100
# Program names protea-supervisor renders itself: the listeners, the tick, the roles. No queue may take one,
# or supervisord would keep one of the two sections and silently drop or merge the other.
# The event listeners protea-supervisor renders (render.listener_blocks).
LISTENERS = ("gate", "tunnel-watch", "deploy-timer", "metrics", "heartbeat", "autoscaler")
RESERVED = frozenset({*LISTENERS, "deploy-tick", "api-canary", *ROLES})
# Programs that run once and exit when started (by the gate, a tick or a deploy): their exits are no restarts.
ONE_SHOTS = frozenset({"migrate", "deploy-tick", "api-canary"})


@dataclass(frozen=True)
class HostFacts:
    """What the parser needs from the machine, passed in so parsing stays pure."""

    home: Path
    python: str
    hostname: str = "localhost"  # host.name's default


@dataclass(frozen=True)
class Paths:
    root: Path
    venv: Path
    logs: Path
    run: Path
    create_root: bool


@dataclass(frozen=True)
class EnvSettings:
    files: tuple[Path, ...]
    required: tuple[str, ...]
    require_jwt_secret: bool


@dataclass(frozen=True)
class Control:
    inet_port: int
    inet_host: str
    username: str
    password_sha: str
    fast_reactions: bool
    operation_wait: float  # how long a command waits for another to release the host's operation lock
    log_retention_days: int = 7  # logs of processes no longer in the stack are deleted after this; 0 keeps


@dataclass(frozen=True)
class Program:
    role: str
    command: str
    directory: Path
    environment: tuple[tuple[str, str], ...]
    stop_signal: str
    stop_grace: int
    startsecs: int
    enabled: bool
    requires_file: str
    fallback_command: str
    # tcp://host:port: supervisord holds the listening socket and gives it to the program on fd 0 (api only).
    socket: str = ""

    @property
    def name(self) -> str:
        return self.role


@dataclass(frozen=True)
class Autoscale:
    """`queues."<name>".autoscale`: the queue's count follows its backlog (operations/autoscale.py)."""

    min: int
    max: int
    target_backlog: int  # ready + unacknowledged messages per process
    scale_up_delay: int
    scale_down_window: int
    cooldown: int


@dataclass(frozen=True)
class Queue:
    name: str
    program: str
    processes: int
    numbered: bool
    stop_grace: int
    command: str
    starved_after: int
    # At most one consumer across every host (a Postgres advisory lock taken by the exec wrapper).
    singleton: bool = False
    autoscale: Autoscale | None = None

    def process_names(self) -> tuple[str, ...]:
        if self.numbered:
            return tuple(f"{self.program}-{n}" for n in range(1, self.processes + 1))
        return (self.program,) if self.processes else ()


@dataclass(frozen=True)
class Workers:
    command: str
    stop_signal: str
    stop_grace: int
    startsecs: int
    directory: Path
    # >0: a worker that exits or gives up starting (FATAL) is started again this many seconds later, for
    # ever (a node's systemd units: Restart=always, RestartSec=30, no start limit); a refused start (exit 78)
    # never is. 0: supervisord's own autorestart.
    restart_delay: int = 0


@dataclass(frozen=True)
class Probes:
    api_ready_url: str
    api_ready_timeout: int
    web_url: str
    web_timeout: int
    public_url: str
    ngrok_api_url: str
    infra_from_env: tuple[str, ...]
    infra_timeout: int
    start_timeout: int  # how long the gate waits for started workers and the tunnel to reach RUNNING


@dataclass(frozen=True)
class TunnelWatch:
    """The tunnel watchdog's rules (probes.public_url and probes.ngrok_api_url say what it probes)."""

    enabled: bool
    probe_interval: int
    probe_timeout: float
    failures: int
    confirm_interval: float
    grace: int
    backoff_initial: int
    backoff_max: int
    max_restarts_per_hour: int
    down_statuses: tuple[int, ...]


@dataclass(frozen=True)
class Deploy:
    repository: Path
    remote: str
    ref: str
    poll_interval: int
    jitter: int
    retry_ladder: tuple[int, ...]
    pause_after_escalation: int
    escalation_command: str
    lock_files: tuple[str, ...]
    install_command: str
    post_install_command: str
    web_dir: str
    build_command: str
    # The served frontend build: a symlink the tick swaps in one rename; the web program runs from it.
    web_current: Path
    enabled: bool  # the deploy-timer listener runs
    check_interval: int  # seconds between `git ls-remote` checks for a new commit (0: none)
    prerequisite_timeout: float  # how long a tick waits for Postgres and RabbitMQ to accept connections
    # The new revision's API started on its own (the program `api-canary`) and proved ready at its own URL
    # before the serving API is touched; both empty: no canary.
    api_canary_command: str = ""
    api_canary_url: str = ""


@dataclass(frozen=True)
class LockSettings:
    file: Path
    flock_timeout: float


@dataclass(frozen=True)
class Metrics:
    enabled: bool
    host: str
    port: int


@dataclass(frozen=True)
class Monitor:
    rabbit_api: str
    queue_prefix: str
    exempt: tuple[str, ...]
    starved_after: int


NOTIFY_EVENTS = ("succeeded", "failed", "rollback_failed", "escalated", "paused", "resumed")


@dataclass(frozen=True)
class NotifySettings:
    """Deploy notifications: webhooks named by the environment variables (in the env files) that hold
    their URLs, which are secrets (a Slack webhook URL is its own credential)."""

    slack_url_env: tuple[str, ...] = ()
    json_url_env: tuple[str, ...] = ()
    events: tuple[str, ...] = NOTIFY_EVENTS
    timeout: float = 5.0
    retries: int = 3


@dataclass(frozen=True)
class BackupSettings:
    dir: Path
    keep: int
    min_free_gb: float
    database_url_env: str
    extensions: tuple[str, ...]
    check_tables: tuple[str, ...]
    min_tables: int
    jobs: int


@dataclass(frozen=True)
class Stack:
    name: str
    sources: tuple[str, ...]
    paths: Paths
    env: EnvSettings
    control: Control
    programs: tuple[Program, ...]
    workers: Workers
    queues: tuple[Queue, ...]
    probes: Probes
    deploy: Deploy
    lock: LockSettings
    tunnel_watch: TunnelWatch
    metrics: Metrics
    monitor: Monitor
    backup: BackupSettings
    notify: NotifySettings = field(default=NotifySettings())
    host: HostSettings = field(default=HostSettings())
    python: str = field(default="")
    # How the stack was chosen (--stack): a host file path, `demo`, or "" for the PROTEA defaults.
    choice: str = field(default="")
    # Which file set each dotted key (queues."protea.ping".processes -> /etc/protea/stack.toml).
    origins: tuple[tuple[str, str], ...] = field(default=())

    def origin(self, dotted: str) -> str:
        """The last file that set `dotted` or anything under it (else the nearest enclosing table's)."""
        parts = key_parts(dotted)
        for end in range(len(parts), 0, -1):
            prefix = ".".join(parts[:end])
            found = [src for key, src in self.origins if key == prefix or key.startswith(prefix + ".")]
            if found:
                return max(found, key=lambda src: self.sources.index(src) if src in self.sources else -1)
        return self.sources[-1] if self.sources else "the stack"

    def program(self, role: str) -> Program:
        for program in self.programs:
            if program.role == role:
                return program
        raise KeyError(role)

    @property
    def config_path(self) -> Path:
        return self.paths.run / "supervisord.conf"

    @property
    def socket_path(self) -> Path:
        return self.paths.run / "supervisor.sock"

    @property
    def pidfile(self) -> Path:
        return self.paths.run / "supervisord.pid"

    def queue(self, name: str) -> Queue:
        """A queue by its name (`protea.ping`) or its program name (`worker-ping`)."""
        for queue in self.queues:
            if name in (queue.name, queue.program):
                return queue
        known = ", ".join(q.name for q in self.queues)
        raise StackError(f"unknown queue {name!r}; expected one of: {known}.")
