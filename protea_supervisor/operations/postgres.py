"""The edge to PostgreSQL: psql, pg_dump and pg_restore against one server, with the password in the
environment only. Every statement names its database; side databases are created, renamed and dropped
from the `postgres` maintenance database."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from protea_supervisor.errors import BackupFailed
from protea_supervisor.operations.backup import Restored, Target, literal, quoted

MAINTENANCE = "postgres"


class Postgres:
    def __init__(self, target: Target) -> None:
        self.target = target

    def _run(self, argv: list[str], database: str | None = None, check: bool = True) -> str:
        env = {**os.environ, **self.target.env(database)}
        # umask: a dump is a full copy of the database; it is never readable by others, not even briefly.
        result = subprocess.run(
            argv, env=env, capture_output=True, text=True, errors="replace", check=False, umask=0o077
        )
        if check and result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            # psql follows an ERROR with the statement and a caret line: the ERROR is what to say.
            errors = [line for line in lines if line.startswith(("ERROR:", "FATAL:", "psql: error:"))]
            detail = (errors or lines or [f"exit {result.returncode}"])[-1]
            for prefix in (f"{argv[0]}: ", "error: ", "ERROR:  "):
                detail = detail.removeprefix(prefix)
            raise BackupFailed(f"{argv[0]} failed: {detail}")
        return result.stdout

    def sql(self, statement: str, database: str | None = None) -> list[str]:
        out = self._run(["psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-c", statement], database)
        return [line for line in out.splitlines() if line]

    def dump(self, path: Path) -> None:
        self._run(["pg_dump", "--format=custom", "--no-owner", f"--file={path}"])

    def listing(self, path: Path) -> str:
        """The archive's table of contents (`pg_restore --list`)."""
        return self._run(["pg_restore", "--list", str(path)])

    def read_whole(self, path: Path) -> None:
        """Read and decompress every entry, data included, writing nothing: a truncated or damaged archive
        fails here (zlib checks every compressed block)."""
        self._run(["pg_restore", "--file=/dev/null", str(path)])

    def restore(self, path: Path, database: str, jobs: int) -> str:
        """pg_restore's stderr: warnings are expected; the checks afterwards decide."""
        env = {**os.environ, **self.target.env(database)}
        argv = ["pg_restore", "--no-owner", "--no-acl", f"--jobs={jobs}", f"--dbname={database}", str(path)]
        result = subprocess.run(argv, env=env, capture_output=True, text=True, errors="replace", check=False)
        return result.stderr

    def databases(self) -> list[str]:
        return self.sql("SELECT datname FROM pg_database ORDER BY 1", MAINTENANCE)

    def create(self, database: str) -> None:
        self.sql(f"CREATE DATABASE {quoted(database)}", MAINTENANCE)

    def drop(self, database: str) -> None:
        self.disconnect(database)
        self.sql(f"DROP DATABASE IF EXISTS {quoted(database)}", MAINTENANCE)

    def allow_connections(self, database: str, allow: bool) -> None:
        self.sql(f"ALTER DATABASE {quoted(database)} ALLOW_CONNECTIONS {str(allow).lower()}", MAINTENANCE)

    def disconnect(self, database: str) -> None:
        self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = {literal(database)} AND pid <> pg_backend_pid()",
            MAINTENANCE,
        )

    def rename(self, database: str, to: str) -> None:
        self.sql(f"ALTER DATABASE {quoted(database)} RENAME TO {quoted(to)}", MAINTENANCE)

    def require_extensions(self, extensions: Sequence[str]) -> None:
        """Before anything is dropped: every extension the data needs can be created on this server."""
        available = set(self.sql("SELECT name FROM pg_available_extensions", MAINTENANCE))
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

    def tables(self, database: str) -> list[str]:
        return self.sql("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database)

    def counts(self, database: str, tables: Sequence[str]) -> dict[str, int]:
        present = set(self.tables(database))
        return {
            table: int(self.sql(f"SELECT count(*) FROM public.{quoted(table)}", database)[0])
            for table in tables
            if table in present
        }

    def measure(self, database: str, check_tables: Sequence[str]) -> Restored:
        return Restored(
            public_tables=tuple(self.tables(database)),
            all_tables=tuple(
                self.sql(
                    "SELECT schemaname || '.' || tablename FROM pg_tables "
                    "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                    database,
                )
            ),
            extensions=tuple(self.sql("SELECT extname FROM pg_extension", database)),
            counts=self.counts(database, check_tables),
        )
