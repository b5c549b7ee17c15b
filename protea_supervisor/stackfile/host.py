"""A host's part in a two-host stack: the server (all state, the API, web, the tunnel, migrations; it declares
which revision may consume) or a compute node (workers only, against the server's Postgres and RabbitMQ),
and the revision guard every worker start passes through. Pure: the stack's `[host]` table and the facts
the wrapper gathers go in, records and verdicts come out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

ROLES = ("server", "node")
# What a node never runs: the state and the public live on the server.
SERVER_ONLY = ("migrate", "api", "web", "tunnel")
HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
SHA = re.compile(r"[0-9a-f]{40}")
# EX_CONFIG: a start refused for a reason that does not fix itself; supervisord is told not to retry it.
REFUSED_EXIT = 78
# The run dir's folder of refusal records, one file `group:process` each (`exec --refusals`).
REFUSALS = "refused"


@dataclass(frozen=True)
class HostSettings:
    role: str = "server"
    name: str = ""  # the machine's hostname unless set
    # The server records a deployed revision in Postgres once migrated and its API proved (nodes follow it).
    declare_revision: bool = False
    # Every worker start passes the revision guard (exit 78 when refused).
    revision_guard: bool = False
    db_url_env: str = "PROTEA_DB_URL"  # the env-file variable that names the server's Postgres
    amqp_url_env: str = "PROTEA_AMQP_URL"  # the one that names RabbitMQ (a singleton's consumer count)
    migrations_dir: str = "alembic/versions"  # its digest is recorded with each declaration
    # The heartbeat listener publishes this host's processes to Postgres (`status --all-hosts`).
    heartbeat: bool = False
    stale_after: int = 30  # seconds without a heartbeat before a host shows as stale

    @property
    def node(self) -> bool:
        return self.role == "node"


def default_name(hostname: str) -> str:
    """host.name's default: the machine's hostname, its first label, as HOST_NAME allows."""
    label = re.sub(r"[^A-Za-z0-9._-]", "-", hostname.split(".")[0]).strip("-._")[:63]
    return label if HOST_NAME.fullmatch(label) else "localhost"


def host_problems(settings: HostSettings, enabled: Sequence[str]) -> list[tuple[str, str]]:
    """(key, what was expected) for each thing wrong with the `[host]` table; `enabled` are the program roles
    the stack runs."""
    problems = []
    if settings.role not in ROLES:
        problems.append(("host.role", f"must be one of {', '.join(ROLES)}, got {settings.role!r}"))
    if not HOST_NAME.fullmatch(settings.name):
        problems.append(("host.name", f"must be a host name (letters, digits, . _ -), got {settings.name!r}"))
    if settings.node:
        problems.extend(
            (f"programs.{role}.enabled", 'must be false on a node (host.role = "node" runs only workers)')
            for role in SERVER_ONLY
            if role in enabled
        )
        if settings.declare_revision:
            problems.append(("host.declare_revision", "must be false on a node: only the server declares"))
    return problems


@dataclass(frozen=True)
class Checkout:
    """What the wrapper found in the worker's directory."""

    head: str  # the commit checked out, or "" when the directory is not a git checkout
    changed: tuple[str, ...]  # `git status --porcelain --untracked-files=no` lines: modified or staged


def short(revision: str) -> str:
    return revision[:10] if revision else "(none)"


def guard_verdict(checkout: Checkout, rendered: str, declared: str | None, node: bool) -> str:
    """'' when a worker may start; else why not, in one sentence.

    The checkout must be clean and at the revision supervisord's config names (PROTEA_REVISION, when a deploy
    rendered one). On a node it must also be the declared revision: the server declares only what it has
    migrated and whose API it has proved, so a node never consumes under code whose schema is not there. The
    server is the declarer: its workers move with its own ticks, and the declaration follows them."""
    if not checkout.head:
        return "the worker's directory is not a git checkout"
    if checkout.changed:
        first = checkout.changed[0].strip()
        more = f" and {len(checkout.changed) - 1} more" if len(checkout.changed) > 1 else ""
        return f"the checkout has uncommitted changes ({first}{more})"
    if rendered and checkout.head != rendered:
        return f"the checkout is at {short(checkout.head)}, not at the deployed revision {short(rendered)}"
    if node:
        if declared is None:
            return "no revision is declared yet (the server's deploy tick declares one)"
        if checkout.head != declared:
            return (
                f"the checkout is at {short(checkout.head)}, not at the declared revision {short(declared)}"
            )
    return ""


def follow_decision(deployed: str, declared: str | None, on_it: bool, force: bool) -> tuple[str, str]:
    """What a node's tick does: ("wait" | "noop" | "follow", why). `on_it`: every worker runs `declared`."""
    if declared is None:
        return "wait", "no revision is declared yet; the node waits for the server's first deploy"
    if force:
        return "follow", f"forced: moving to the declared revision {short(declared)}"
    if deployed == declared and on_it:
        return "noop", f"every worker runs the declared revision {short(declared)}"
    if deployed == declared:
        return "follow", f"{short(declared)} is declared and deployed here, but not every worker runs it"
    return "follow", f"the server declared {short(declared)} (this node runs {short(deployed)})"


def follow_plan(revision: str, install: bool) -> tuple[tuple[str, str], ...]:
    """(step name, what it does) for moving a node onto the declared `revision`. No undo: a node that fails
    to move is left with its workers stopped, never on another revision."""
    rev = short(revision)
    steps = [("checkout", f"check out the declared {rev} (detached)")]
    if install:
        steps.append(("install", "install dependencies (a lock file changed)"))
    steps.append(("apply", f"render with PROTEA_REVISION={rev}; restart the workers (each finishes its job)"))
    steps.append(("verify-node", f"every worker RUNNING and running {rev} (its own environment)"))
    return tuple(steps)
