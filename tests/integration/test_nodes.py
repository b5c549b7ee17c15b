"""Two hosts on one machine, sharing this machine's real Postgres and RabbitMQ: a server whose deploy tick
declares the revision it deployed, and a compute node (host.role = "node") whose workers start only from a
clean checkout at the declared revision. Each has its own stack file, run dir and supervisord."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import BIN, Stack, stack_file, wait_for
from deploy_app import AppRepo, deploy_stack, git
from rabbit import AMQP, WORKER_COMMAND

from protea_supervisor import declared

pytestmark = pytest.mark.integration

# The app's migration: it fails in a revision that holds MIGRATION_FAILS.
MIGRATE = "import pathlib, sys\nsys.exit(1 if pathlib.Path('MIGRATION_FAILS').exists() else 0)\n"
SERVER_ONLY = ("migrate", "api", "web", "tunnel")


def psql(database: str, sql: str) -> str:
    argv = ["psql", "-X", "-q", "-tA", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c", sql]
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.fixture
def database() -> Iterator[str]:
    """The server's database, this test's own (the declaration lives in it)."""
    name = f"psn_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def node_stack(base: Path, checkout: Path, queue: str, db_url: str) -> Stack:
    """A compute node: only the queue's worker, in its own checkout, against the server's Postgres and
    RabbitMQ (named in its env file), stopped with SIGINT and 120 s as today's node units."""
    home = base / "node"
    home.mkdir()
    env_file = home / "node.env"
    env_file.write_text(f"PROTEA_DB_URL={db_url}\nPROTEA_AMQP_URL={AMQP}\n")
    env_file.chmod(0o600)
    off = {role: {"enabled": False} for role in SERVER_ONLY}
    path = stack_file(
        home,
        queues={queue: {"processes": 1, "command": WORKER_COMMAND, "stop_grace": 120}},
        env_files=[str(env_file)],
        extra={
            "name": "node",
            "host": {"role": "node", "name": "gpu-1", "revision_guard": True},
            "paths": {"root": str(checkout), "logs": "{stack_dir}/logs", "run": "{stack_dir}/run"},
            "programs": off,
            "workers": {"stop_signal": "INT"},
            "probes": {"infra_from_env": ["PROTEA_DB_URL", "PROTEA_AMQP_URL"]},
            "deploy": {"enabled": False},
        },
    )
    return Stack(path)


def restart(stack: Stack, program: str) -> None:
    ctl = [str(BIN / "supervisorctl"), "-c", str(stack.conf), "restart", program]
    subprocess.run(ctl, capture_output=True, text=True)


def refused(stack: Stack, program: str) -> str:
    """The status description of a worker the guard keeps down ('' while it runs or retries)."""
    row = stack.status()[program]
    return str(row["description"]) if row["state"] == "FATAL" else ""


def test_the_server_declares_what_it_deployed_and_a_node_starts_workers_only_on_it(
    short_tmp: Path, supervisord: Callable[[Stack], None], queue_name: str, database: str
) -> None:
    repo = AppRepo(short_tmp)
    repo.commit("a migration", {"migrate.py": MIGRATE, "alembic/versions/001_init.py": "# init\n"})
    server = deploy_stack(
        short_tmp,
        repo,
        queue_name,
        db_url=database,
        extra={
            "host": {"name": "server-1", "declare_revision": True, "revision_guard": True},
            "programs": {"migrate": {"command": "{python} -P migrate.py", "directory": "{root}"}},
        },
    )
    supervisord(server)
    first = server.ps("tick")
    assert first.code == 10, first.both
    rev1 = git(repo.dev, "rev-parse", "HEAD")
    assert f"declared {rev1[:10]} in Postgres" in first.out, first.out
    declaration = declared.current(database, "PROTEA_DB_URL")
    assert declaration is not None and (declaration.revision, declaration.host) == (rev1, "server-1")
    digest = declared.migration_digest(repo.worktree, rev1, "alembic/versions")
    assert declaration.migrations == digest
    # The server's own worker passed its guard: the worktree is clean at the revision its config names.
    worker = "worker-" + queue_name.replace(".", "-")
    assert server.status()[worker]["state"] == "RUNNING"

    # A revision whose migration fails is never declared.
    rev2 = repo.commit("a broken migration", {"MIGRATION_FAILS": "yes", "alembic/versions/002.py": "# 2\n"})
    second = server.ps("tick")
    assert second.code == 20, second.both
    assert "declared" not in second.out.replace("undo-declare", "")
    assert declared.current(database, "PROTEA_DB_URL") == declaration

    # The node: its own checkout of the app, at the declared revision. Its worker starts.
    checkout = short_tmp / "node-checkout"
    git(short_tmp, "clone", "--quiet", str(repo.remote), str(checkout))
    git(checkout, "checkout", "--quiet", "--detach", rev1)
    node = node_stack(short_tmp, checkout, queue_name, database)
    supervisord(node)
    up = node.ps("up")
    assert up.code == 0, up.both
    assert node.status()[worker]["state"] == "RUNNING"

    # A dirty checkout (an edited tracked file): the start is refused (exit 78), the worker stays down and
    # status says why.
    (checkout / "app.py").write_text((checkout / "app.py").read_text() + "# local edit\n")
    restart(node, worker)
    wait_for(lambda: refused(node, worker), 60, "the dirty checkout refused")
    assert refused(node, worker) == "refused: the checkout has uncommitted changes (M app.py)"
    assert "revision guard: the checkout has uncommitted changes" in node.log(worker)
    git(checkout, "checkout", "--quiet", "--", "app.py")

    # Clean, but on a revision the server never declared (the one whose migration failed): refused.
    git(checkout, "checkout", "--quiet", "--detach", rev2)
    restart(node, worker)
    wait_for(lambda: "declared revision" in refused(node, worker), 60, "the undeclared revision refused")
    assert refused(node, worker) == (
        f"refused: the checkout is at {rev2[:10]}, not at the declared revision {rev1[:10]}"
    )

    # Back at the declared revision: it starts, and the refusal is gone from status.
    git(checkout, "checkout", "--quiet", "--detach", rev1)
    restart(node, worker)
    wait_for(lambda: node.status()[worker]["state"] == "RUNNING", 30, "the worker back")
    assert node.status()[worker]["description"].startswith("pid ")
