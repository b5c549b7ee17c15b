"""`protea-supervisor exec`: the wrapper every rendered program starts through."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import click

from protea_supervisor.errors import CommandNotFound, EnvError, UsageError
from protea_supervisor.hosts import guard
from protea_supervisor.stackfile.env import after_double_dash, check_required, merged_environment


@click.command("exec", context_settings={"allow_interspersed_args": False})
@click.option(
    "--env-file",
    "env_files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Dotenv file to load (repeatable; later files win; missing files are skipped).",
)
@click.option("--require", "required", multiple=True, help="Variable that must be set (repeatable).")
@click.option(
    "--require-jwt-secret",
    is_flag=True,
    help="Require PROTEA_JWT_SECRET unless PROTEA_AUTHN_REQUIRED is false.",
)
@click.option(
    "--requires-file", help="Run --fallback instead when this file (relative to the cwd) is missing."
)
@click.option("--fallback", help="Command line used when --requires-file is missing.")
@click.option(
    "--revision-guard",
    is_flag=True,
    help="Start only from a clean checkout at PROTEA_REVISION (exit 78 otherwise).",
)
@click.option(
    "--declared-from",
    default="",
    metavar="VAR",
    help="With --revision-guard: also at the revision declared in the Postgres that VAR names (a node).",
)
@click.option(
    "--refusals",
    type=click.Path(path_type=Path),
    help="With --revision-guard: the directory where a refused start leaves its reason for `status`.",
)
@click.option(
    "--singleton",
    default="",
    metavar="QUEUE",
    help="Hold QUEUE's one-consumer lock in Postgres for the command's life (exit 78 when another holds it).",
)
@click.option("--singleton-db", default="PROTEA_DB_URL", metavar="VAR", help="The variable naming Postgres.")
@click.option(
    "--singleton-broker", default="PROTEA_AMQP_URL", metavar="VAR", help="The variable naming RabbitMQ."
)
@click.option(
    "--singleton-wait",
    default=60.0,
    type=click.FloatRange(0, 86400),
    metavar="SECONDS",
    help="With --singleton: how long the lock's new holder waits for RabbitMQ to count no other consumer "
    "of QUEUE (one whose lock was lost, finishing its job) before it starts; exit 78 when one is still "
    "there.",
)
@click.option("--host-name", default="", help="This host's name, shown to a start the lock refuses.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_cmd(
    env_files: tuple[Path, ...],
    required: tuple[str, ...],
    require_jwt_secret: bool,
    requires_file: str | None,
    fallback: str | None,
    revision_guard: bool,
    declared_from: str,
    refusals: Path | None,
    singleton: str,
    singleton_db: str,
    singleton_broker: str,
    singleton_wait: float,
    host_name: str,
    command: tuple[str, ...],
) -> None:
    """Load env files, check required variables, and exec COMMAND (same pid, so supervisord tracks it)."""
    env = merged_environment(os.environ, env_files)
    argv = list(after_double_dash(command))
    if not argv:
        raise UsageError("exec needs a command after --.")
    missing = bool(requires_file) and not Path(str(requires_file)).exists()
    try:
        check_required(env, required, require_jwt_secret, env_files)
        if missing and not fallback:
            raise EnvError(f"{requires_file} is missing and no --fallback was given.")
    except EnvError as why:
        if refusals:  # exit 78: final, and said in `status`
            guard.refuse(refusals, env, str(why).rstrip("."), str(why))
        raise
    if revision_guard:
        guard.check(Path.cwd(), env, declared_from, refusals)
    if singleton:
        held = guard.single(
            singleton, singleton_db, host_name or "unknown", env, refusals, singleton_broker, singleton_wait
        )
        click.echo(held, err=True)
    # Every check passed: a refusal an earlier start left is no longer true.
    guard.passed(refusals, env)
    if missing:
        click.echo(
            f"protea-supervisor exec: {requires_file} is missing; starting the fallback: {fallback}", err=True
        )
        argv = shlex.split(str(fallback))
    try:
        os.execvpe(argv[0], argv, env)
    except FileNotFoundError:
        raise CommandNotFound(f"command not found: {argv[0]}.") from None
    except PermissionError:
        raise CommandNotFound(f"command is not executable: {argv[0]}.") from None
    except OSError as why:
        raise CommandNotFound(f"cannot execute {argv[0]}: {why.strerror}.") from None


COMMANDS = (exec_cmd,)
