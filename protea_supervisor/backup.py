"""Postgres backup, restore and restore drill (today's checkpoint_db.sh, restore-from-backup.sh and
disaster-recovery.sh), judged by checks rather than by pg_restore's exit code, which is non-zero on benign
warnings.

The pure part names dumps, picks what retention deletes, turns the database URL into libpq's environment
(the password never reaches an argv or a log) and compares row counts. `Postgres` is the edge: it runs
psql, pg_dump and pg_restore.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from protea_supervisor.errors import BackupFailed

DUMP_PREFIX = "protea-"
DUMP_SUFFIX = ".dump"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")


@dataclass(frozen=True)
class Target:
    """A database to connect to, as libpq environment variables."""

    host: str
    port: int
    user: str
    password: str
    database: str

    def env(self, database: str | None = None) -> dict[str, str]:
        env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGDATABASE": database or self.database}
        if self.user:
            env["PGUSER"] = self.user
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def describe(self) -> str:
        return f"{self.database} on {self.host}:{self.port}"


def target_from_url(url: str, variable: str) -> Target:
    """postgresql://user:pass@host:port/db, also with a SQLAlchemy driver suffix (postgresql+psycopg)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise BackupFailed(f"{variable} is not a URL that can be read.") from None
    if parts.scheme.split("+", 1)[0] not in ("postgresql", "postgres"):
        raise BackupFailed(f"{variable} is not a postgresql:// URL.")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise BackupFailed(f"{variable} names no database.")
    try:
        port = parts.port or 5432
    except ValueError:
        raise BackupFailed(f"{variable} has an invalid port.") from None
    return Target(
        host=parts.hostname or "127.0.0.1",
        port=port,
        user=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        database=database,
    )


def dump_name(now: datetime, label: str = "") -> str:
    suffix = f"-{re.sub(r'[^A-Za-z0-9._-]+', '-', label).strip('-')}" if label else ""
    return f"{DUMP_PREFIX}{now:%Y%m%dT%H%M%S}{suffix}{DUMP_SUFFIX}"


def to_delete(names: Sequence[str], keep: int) -> list[str]:
    """Retention by count: the oldest dumps beyond the newest `keep` (names sort by their timestamp)."""
    dumps = sorted(n for n in names if n.startswith(DUMP_PREFIX) and n.endswith(DUMP_SUFFIX))
    return dumps[: max(0, len(dumps) - keep)]


def count_mismatches(source: Mapping[str, int], restored: Mapping[str, int]) -> list[str]:
    return [
        f"{table}: {count} in the source, {restored.get(table, 'missing')} restored"
        for table, count in sorted(source.items())
        if restored.get(table) != count
    ]


def quoted(identifier: str) -> str:
    if not _IDENT.fullmatch(identifier):
        raise BackupFailed(f"{identifier!r} is not a plain SQL identifier.")
    return f'"{identifier}"'


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the edge -------------------------------------------------------------------------------------------


class Postgres:
    """psql, pg_dump and pg_restore against one server, with the password in the environment only."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def _run(self, argv: list[str], database: str | None = None, check: bool = True) -> str:
        env = {**os.environ, **self.target.env(database)}
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if check and result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise BackupFailed(f"{argv[0]} failed: {detail[-1] if detail else result.returncode}")
        return result.stdout

    def sql(self, statement: str, database: str | None = None) -> list[str]:
        out = self._run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", statement], database)
        return [line for line in out.splitlines() if line]

    def dump(self, path: Path) -> None:
        self._run(["pg_dump", "--format=custom", "--no-owner", f"--file={path}"])

    def list_entries(self, path: Path) -> int:
        return sum(
            1
            for line in self._run(["pg_restore", "--list", str(path)]).splitlines()
            if line and line[0] != ";"
        )

    def restore(self, path: Path, database: str, jobs: int) -> str:
        """pg_restore's stderr: warnings are expected; the checks afterwards decide."""
        env = {**os.environ, **self.target.env(database)}
        argv = ["pg_restore", "--no-owner", "--no-acl", f"--jobs={jobs}", f"--dbname={database}", str(path)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        return result.stderr

    def recreate(self, database: str) -> None:
        quoted(database)  # refuses anything but a plain name before it goes into SQL
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()",
            "postgres",
        )
        self.sql(f"DROP DATABASE IF EXISTS {quoted(database)}", "postgres")
        self.sql(f"CREATE DATABASE {quoted(database)}", "postgres")

    def drop(self, database: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {quoted(database)}", "postgres")

    def require_extensions(self, extensions: Sequence[str]) -> None:
        """Before anything is dropped: every extension the data needs can be created on this server."""
        available = set(self.sql("SELECT name FROM pg_available_extensions", "postgres"))
        missing = [e for e in extensions if e not in available]
        if missing:
            raise BackupFailed(
                f"extension {', '.join(missing)} is not available on {self.target.host}:{self.target.port}; "
                "the restore needs it before the data (install it on the server, e.g. pgvector for vector). "
                "Nothing was changed."
            )

    def create_extensions(self, database: str, extensions: Sequence[str]) -> None:
        for extension in extensions:
            self.sql(f"CREATE EXTENSION IF NOT EXISTS {quoted(extension)}", database)

    def extensions(self, database: str) -> set[str]:
        return set(self.sql("SELECT extname FROM pg_extension", database))

    def tables(self, database: str) -> list[str]:
        return self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database)

    def counts(self, database: str, tables: Sequence[str]) -> dict[str, int]:
        present = set(self.tables(database))
        return {
            table: int(self.sql(f"SELECT count(*) FROM public.{quoted(table)}", database)[0])
            for table in tables
            if table in present
        }


# --- the operations -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackupResult:
    path: Path
    entries: int
    size: int
    deleted: tuple[str, ...]


def run_backup(
    pg: Postgres, directory: Path, keep: int, min_free_bytes: int, label: str, now: datetime
) -> BackupResult:
    """pg_dump to a dated file, verified with pg_restore --list, with a .sha256; then retention."""
    directory.mkdir(parents=True, exist_ok=True)
    free = os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize
    if free < min_free_bytes:
        raise BackupFailed(
            f"refusing to back up: {free / 1e9:.1f} GB free in {directory}, below backup.min_free_gb "
            f"({min_free_bytes / 1e9:g} GB)."
        )
    final = directory / dump_name(now, label)
    partial = final.with_name(final.name + ".partial")
    try:
        pg.dump(partial)
        entries = pg.list_entries(partial)
        if entries < 1:
            raise BackupFailed(f"pg_restore --list finds nothing in the dump of {pg.target.describe()}.")
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    final.with_name(final.name + ".sha256").write_text(f"{sha256_of(final)}  {final.name}\n")
    deleted = to_delete([p.name for p in directory.iterdir()], keep)
    for name in deleted:
        (directory / name).unlink(missing_ok=True)
        (directory / (name + ".sha256")).unlink(missing_ok=True)
    return BackupResult(final, entries, final.stat().st_size, tuple(deleted))


def verify_checksum(path: Path) -> None:
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        return
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    if not words or not re.fullmatch(r"[0-9a-f]{64}", words[0]):
        raise BackupFailed(
            f"{sidecar} holds no SHA-256; it cannot vouch for {path.name}; nothing was changed."
        )
    if words[0] != sha256_of(path):
        raise BackupFailed(
            f"{path} does not match its {sidecar.name}; the dump is damaged; nothing was changed."
        )


def check_dump(pg: Postgres, path: Path, extensions: Sequence[str]) -> int:
    """Everything that can refuse a dump without touching anything live: its checksum, that pg_restore can
    read its table of contents, and that the extensions it needs exist on the server. Returns its entries."""
    verify_checksum(path)
    try:
        entries = pg.list_entries(path)
    except BackupFailed as why:
        raise BackupFailed(
            f"{path.name} is not a dump pg_restore can read ({why}); nothing was changed."
        ) from None
    if entries < 1:
        raise BackupFailed(f"{path.name} lists no entries; nothing was changed.")
    pg.require_extensions(extensions)
    return entries


@dataclass(frozen=True)
class RestoreChecks:
    extensions: tuple[str, ...]
    tables: tuple[str, ...]  # must exist and hold rows
    min_tables: int


def restore_into(pg: Postgres, path: Path, database: str, extensions: Sequence[str], jobs: int) -> str:
    """Drop and recreate `database`, create the extensions first, then pg_restore; returns its warnings.
    The caller has run `check_dump`."""
    pg.recreate(database)
    pg.create_extensions(database, extensions)
    return pg.restore(path, database, jobs)


def check_restored(pg: Postgres, database: str, checks: RestoreChecks) -> list[str]:
    problems = []
    tables = pg.tables(database)
    if len(tables) < checks.min_tables:
        problems.append(f"{len(tables)} public tables, expected at least {checks.min_tables}")
    missing_ext = sorted(set(checks.extensions) - pg.extensions(database))
    if missing_ext:
        problems.append(f"extensions missing: {', '.join(missing_ext)}")
    counts = pg.counts(database, checks.tables)
    for table in checks.tables:
        if table not in counts:
            problems.append(f"table {table} missing")
        elif counts[table] == 0:
            problems.append(f"table {table} is empty")
    return problems


def drill(pg: Postgres, path: Path, extensions: Sequence[str], tables: Sequence[str], jobs: int,
          now: datetime) -> tuple[dict[str, int], list[str]]:  # fmt: skip
    """Restore into a scratch database, compare row counts with the live one, drop the scratch database."""
    scratch = f"{pg.target.database}_drill_{now:%Y%m%d%H%M%S}"
    check_dump(pg, path, extensions)
    try:
        restore_into(pg, path, scratch, extensions, jobs)
        wanted = list(tables) or pg.tables(pg.target.database)
        source = pg.counts(pg.target.database, wanted)
        restored = pg.counts(scratch, wanted)
        problems = count_mismatches(source, restored)
        missing_ext = sorted(set(extensions) - pg.extensions(scratch))
        if missing_ext:
            problems.append(f"extensions missing: {', '.join(missing_ext)}")
        return restored, problems
    finally:
        pg.drop(scratch)
