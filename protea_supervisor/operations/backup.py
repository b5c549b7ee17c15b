"""Postgres backup, restore and restore drill (today's checkpoint_db.sh, restore-from-backup.sh and
disaster-recovery.sh): the pure part.

It names dumps (unique within a second), picks what retention deletes, names the side databases a restore
and a drill use, turns the database URL into libpq's environment (the password never reaches an argv or a
log), reads a dump's table of contents, and judges a restored database from what was measured. The edge
that runs psql, pg_dump and pg_restore is `postgres.Postgres`; the operations are in `dumps`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import unquote, urlsplit

from protea_supervisor.errors import BackupFailed

DUMP_PREFIX = "protea-"
DUMP_SUFFIX = ".dump"
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$-]*")
_DUMP = re.compile(r"protea-(\d{8}T\d{6})(?:\.(\d+))?(?:-.*)?\.dump")
NAME_MAX = 63  # Postgres truncates identifiers beyond 63 bytes
# Databases a restore may never replace: the one it connects to for the switch, and the templates.
SYSTEM_DATABASES = ("postgres", "template0", "template1")
# Side databases: the dump is restored into a staging one; the live one is renamed aside when replaced.
STAGING, ASIDE, DRILL = "rst", "pre", "drl"


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


def dump_name(now: datetime, label: str = "", taken: Collection[str] = ()) -> str:
    """protea-<time>[.<n>][-<label>].dump, with the smallest n that no dump of the same second has."""
    stamp = f"{now:%Y%m%dT%H%M%S}"
    suffix = f"-{re.sub(r'[^A-Za-z0-9._-]+', '-', label).strip('-')}" if label.strip("-") else ""
    same_second = {key[1] for key in map(_order, taken) if key and key[0] == stamp}
    n = 0
    while n in same_second:
        n += 1
    return f"{DUMP_PREFIX}{stamp}{f'.{n}' if n else ''}{suffix}{DUMP_SUFFIX}"


def _order(name: str) -> tuple[str, int] | None:
    match = _DUMP.fullmatch(name)
    return (match.group(1), int(match.group(2) or 0)) if match else None


def to_delete(names: Sequence[str], keep: int) -> list[str]:
    """Retention by count: the oldest dumps beyond the newest `keep`, ordered by time then sequence."""
    dumps = sorted((key, n) for n in names if (key := _order(n)))
    return [name for _, name in dumps[: max(0, len(dumps) - keep)]]


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


def literal(identifier: str) -> str:
    """A plain identifier as an SQL string literal (it holds no quote, `quoted` has checked it)."""
    quoted(identifier)
    return f"'{identifier}'"


def side_name(database: str, role: str, now: datetime, taken: Collection[str] = ()) -> str:
    """<database>_<role><time>[_<n>], not among `taken`, the database part cut so that the whole stays
    within Postgres's 63 bytes."""
    n = 0
    while True:
        suffix = f"_{role}{now:%Y%m%d%H%M%S}" + (f"_{n}" if n else "")
        name = database.encode()[: NAME_MAX - len(suffix)].decode(errors="ignore") + suffix
        if name not in taken:
            return name
        n += 1


def side_names(database: str, role: str, names: Sequence[str]) -> list[str]:
    """Which of `names` are side databases of `database` in `role` (left by an earlier restore or drill)."""
    head = side_name(database, role, datetime(2000, 1, 1))[: -len("20000101000000")]
    return sorted(n for n in names if re.fullmatch(re.escape(head) + r"\d{14}(_\d+)?", n))


def refuse_system_database(database: str) -> None:
    if database in SYSTEM_DATABASES:
        raise BackupFailed(
            f"a restore never replaces {database!r}: it is a system database (name your application's "
            "database in the URL); nothing was changed."
        )


def toc_tables(listing: str) -> list[str]:
    """The tables a `pg_restore --list` table of contents creates, as schema.name: the TABLE entries of
    catalog pg_class (1259), not their TABLE DATA. Comment lines are skipped."""
    tables = set()
    for line in listing.splitlines():
        if line.startswith(";") or ";" not in line:
            continue
        # 216; 1259 16517 TABLE public items postgres   (schema, name, owner; a name may hold spaces)
        words = line.split(";", 1)[1].split()
        if len(words) >= 5 and words[0] == "1259" and words[2] == "TABLE":
            name = " ".join(words[4:-1]) if len(words) > 5 else words[4]
            tables.add(f"{words[3]}.{name}")
    return sorted(tables)


@dataclass(frozen=True)
class RestoreChecks:
    extensions: tuple[str, ...]
    tables: tuple[str, ...]  # must exist and hold rows
    min_tables: int


@dataclass(frozen=True)
class Restored:
    """What was measured in a restored database."""

    public_tables: tuple[str, ...]
    all_tables: tuple[str, ...]  # schema.name, every user schema
    extensions: tuple[str, ...]
    counts: Mapping[str, int]  # of the check tables that exist


def problems(checks: RestoreChecks, expected_tables: Sequence[str], restored: Restored) -> list[str]:
    """Why a restored database must not be used: the same judgement for a restore and a drill."""
    found = []
    if len(restored.public_tables) < checks.min_tables:
        found.append(f"{len(restored.public_tables)} public tables, expected at least {checks.min_tables}")
    missing_ext = sorted(set(checks.extensions) - set(restored.extensions))
    if missing_ext:
        found.append(f"extensions missing: {', '.join(missing_ext)}")
    for table in checks.tables:
        if table not in restored.counts:
            found.append(f"table {table} missing")
        elif restored.counts[table] == 0:
            found.append(f"table {table} is empty")
    lost = sorted(set(expected_tables) - set(restored.all_tables))
    if lost:
        shown = ", ".join(lost[:5]) + (f" and {len(lost) - 5} more" if len(lost) > 5 else "")
        found.append(f"{len(lost)} tables of the dump not restored ({shown})")
    return found
