"""The declared revision: which code may consume, kept in the server's Postgres.

The server's deploy tick writes a row once a revision is migrated and its API proved (`declare`), and again
for the previous revision when it rolls back; the newest row is the declaration. Nodes read it (`current`)
before a worker starts and to follow the server. Its own schema, created on first use under an advisory
lock, so two hosts creating it at once do not collide; each declaration is one transaction that also sends
`NOTIFY protea_supervisor_declared` with the revision, for followers that listen.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from protea_supervisor import exitcodes
from protea_supervisor.errors import BackupFailed, ProteaError
from protea_supervisor.operations.backup import target_from_url
from protea_supervisor.operations.postgres import Postgres
from protea_supervisor.stackfile.env import merged_environment
from protea_supervisor.stackfile.host import HOST_NAME, SHA

if TYPE_CHECKING:  # only a type here: the exec wrapper's start-up does not load the stack model
    from protea_supervisor.stackfile.stack import Stack

TABLE = "protea_supervisor.declared_revision"
CHANNEL = "protea_supervisor_declared"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_CREATE = f"""
SELECT pg_advisory_xact_lock(hashtext('{TABLE}'));
CREATE SCHEMA IF NOT EXISTS protea_supervisor;
CREATE TABLE IF NOT EXISTS {TABLE} (
    id bigserial PRIMARY KEY,
    revision text NOT NULL CHECK (revision ~ '^[0-9a-f]{{40}}$'),
    migrations text NOT NULL,
    host text NOT NULL,
    declared_at timestamptz NOT NULL DEFAULT now()
);"""


class DeclarationUnavailable(ProteaError):
    """The server's Postgres could not be asked or written (not the revision's fault)."""

    exit_code = exitcodes.POSTGRES_UNAVAILABLE  # EX_TEMPFAIL: try again later


@dataclass(frozen=True)
class Declaration:
    revision: str
    migrations: str  # sha256 of the migration files at the revision (`migration_digest`)
    host: str  # the server that declared it
    declared_at: str  # UTC, ISO 8601


def server_url(stack: Stack) -> str:
    """The server's Postgres URL: `host.db_url_env` as the stack's env files (over the environment) set it."""
    return merged_environment(os.environ, stack.env.files).get(stack.host.db_url_env, "")


def database(url: str, variable: str) -> Postgres:
    """The server's Postgres named by `url`; a connection attempt gives up after 5 s (a host cut off from
    the server must not hang a worker's start or a listener)."""
    os.environ.setdefault("PGCONNECT_TIMEOUT", "5")
    if not url:
        raise DeclarationUnavailable(
            f"{variable} is not set in the env files; it names the server's Postgres."
        )
    try:
        return Postgres(target_from_url(url, variable))
    except BackupFailed as why:
        raise DeclarationUnavailable(str(why)) from None


def declare(url: str, variable: str, revision: str, migrations: str, host: str) -> None:
    """Record `revision` as the declared one (a new row; the history stays)."""
    if not SHA.fullmatch(revision) or not _DIGEST.fullmatch(migrations) or not HOST_NAME.fullmatch(host):
        raise DeclarationUnavailable(f"refusing to declare {revision!r} ({migrations!r}, {host!r}).")
    try:
        database(url, variable).sql(_insert(revision, migrations, host))
    except BackupFailed as why:
        raise DeclarationUnavailable(f"declaring {revision[:10]}: {why}") from None


def _insert(revision: str, migrations: str, host: str) -> str:
    values = f"'{revision}', '{migrations}', '{host}'"
    return (
        f"{_CREATE}\nINSERT INTO {TABLE} (revision, migrations, host) VALUES ({values});\n"
        f"NOTIFY {CHANNEL}, '{revision}';"
    )


def current(url: str, variable: str) -> Declaration | None:
    """The newest declaration, or None when nothing was ever declared."""
    db = database(url, variable)
    try:
        return newest(db)
    except BackupFailed as why:
        raise DeclarationUnavailable(f"reading the declared revision: {why}") from None


def newest(db: Postgres, name: str | None = None) -> Declaration | None:
    """The newest declaration in database `name` (the target's own by default); raises BackupFailed."""
    if db.sql(f"SELECT to_regclass('{TABLE}') IS NOT NULL", name) != ["t"]:
        return None
    rows = db.sql(
        "SELECT revision, migrations, host, "
        "to_char(declared_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
        f"FROM {TABLE} ORDER BY id DESC LIMIT 1",
        name,
    )
    if not rows:
        return None
    revision, migrations, host, declared_at = rows[0].split("|")
    return Declaration(revision, migrations, host, declared_at)


def carry(db: Postgres, restored: str) -> Declaration | None:
    """Write the live database's newest declaration into `restored` as its newest too (a restored copy
    about to replace the live one: its own declaration is the dump's, older than what the server runs, and
    nodes would follow it back). None when the live database has none, or is gone (a disaster recovery).
    Raises BackupFailed."""
    live = newest(db) if db.target.database in db.databases() else None
    if live is not None:
        db.sql(_insert(live.revision, live.migrations, live.host), restored)
    return live


def migration_digest(root: Path, revision: str, directory: str) -> str:
    """sha256 of `git ls-tree -r` of the migrations directory at `revision` (paths and blob ids): two
    revisions with the same migrations have the same digest."""
    result = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "-r", revision, "--", directory],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise DeclarationUnavailable(f"git ls-tree {revision[:10]} -- {directory}: {result.stderr.strip()}")
    return hashlib.sha256(result.stdout.encode()).hexdigest()
