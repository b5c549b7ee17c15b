"""Backup, restore and drill as operations over `postgres.Postgres`, judged by checks rather than by
pg_restore's exit code (non-zero on benign warnings).

A restore never drops the live database first. The dump is proved readable whole before anything is
stopped; it is restored into a staging database beside the live one and judged there with the same checks
as the drill; only then is the live database renamed aside and the staging one renamed into its place (two
catalog renames, undone if the second fails). A restore that fails at any point leaves the live database
exactly as it was. The database renamed aside is kept until the next successful restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from protea_supervisor.errors import BackupFailed
from protea_supervisor.locks.operation import BACKUP, operation
from protea_supervisor.operations.backup import (
    ASIDE,
    DRILL,
    STAGING,
    RestoreChecks,
    count_mismatches,
    dump_name,
    problems,
    side_name,
    side_names,
    to_delete,
    toc_tables,
)
from protea_supervisor.operations.postgres import Postgres
from protea_supervisor.stackfile.files import write_atomic

Report = Callable[[str], None]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def private_dir(directory: Path, report: Report) -> None:
    """backup.dir is 0700 and its dumps 0600: each dump is a full copy of the database. A folder or dumps
    left readable by an earlier version are tightened, and said so."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(directory.stat().st_mode) & 0o077:
        directory.chmod(0o700)
        report(f"made {directory} private (0700): it holds copies of the database")
    for path in directory.iterdir():
        if path.name.startswith("protea-") and path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.chmod(0o600)


@dataclass(frozen=True)
class BackupResult:
    path: Path
    entries: int
    size: int
    deleted: tuple[str, ...]


def run_backup(
    pg: Postgres,
    directory: Path,
    keep: int,
    min_free_bytes: int,
    label: str,
    now: Callable[[], datetime],
    wait: float,
    report: Report,
) -> BackupResult:
    """One backup at a time per folder (a second waits, saying for whom): pg_dump to a uniquely named file,
    verified with pg_restore --list, with a .sha256; then retention."""
    private_dir(directory, report)
    with operation(directory, "backup", wait, report, kind=BACKUP):
        fs = os.statvfs(directory)
        free = fs.f_bavail * fs.f_frsize
        if free < min_free_bytes:
            raise BackupFailed(
                f"refusing to back up: {free / 1e9:.1f} GB free in {directory}, below backup.min_free_gb "
                f"({min_free_bytes / 1e9:g} GB)."
            )
        final = directory / dump_name(now(), label, [p.name for p in directory.iterdir()])
        partial = final.with_name(final.name + ".partial")
        try:
            pg.dump(partial)
            entries = len(entry_lines(pg.listing(partial)))
            if entries < 1:
                raise BackupFailed(f"pg_restore --list finds nothing in the dump of {pg.target.describe()}.")
            os.replace(partial, final)
        finally:
            partial.unlink(missing_ok=True)
        write_atomic(
            final.with_name(final.name + ".sha256"), f"{sha256_of(final)}  {final.name}\n", mode=0o600
        )
        deleted = to_delete([p.name for p in directory.iterdir()], keep)
        for name in deleted:
            (directory / name).unlink(missing_ok=True)
            (directory / (name + ".sha256")).unlink(missing_ok=True)
        return BackupResult(final, entries, final.stat().st_size, tuple(deleted))


def entry_lines(listing: str) -> list[str]:
    return [line for line in listing.splitlines() if line and not line.startswith(";")]


def verify_checksum(path: Path) -> bool:
    """True when a .sha256 beside the dump vouches for it; False when there is none; BackupFailed when it
    holds no digest or another one."""
    sidecar = path.with_name(path.name + ".sha256")
    try:
        text = sidecar.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError as why:
        raise BackupFailed(f"{sidecar} cannot be read ({why.strerror}); nothing was changed.") from None
    words = text.split()
    if not words or not re.fullmatch(r"[0-9a-fA-F]{64}", words[0]):
        raise BackupFailed(
            f"{sidecar} holds no SHA-256; it cannot vouch for {path.name}; nothing was changed."
        )
    if words[0].lower() != sha256_of(path):
        raise BackupFailed(
            f"{path} does not match its {sidecar.name}; the dump is damaged; nothing was changed."
        )
    return True


@dataclass(frozen=True)
class Dump:
    path: Path
    entries: int
    tables: tuple[str, ...]  # schema.name, from its table of contents
    vouched: bool  # a .sha256 matched


def check_dump(pg: Postgres, path: Path, extensions: Sequence[str]) -> Dump:
    """Everything that can refuse a dump without touching anything: its checksum when it has one, its table
    of contents, a read of the whole archive (a cut or damaged one fails here, sidecar or not), and the
    extensions it needs on the server."""
    vouched = verify_checksum(path)
    try:
        listing = pg.listing(path)
        entries = entry_lines(listing)
        if not entries:
            raise BackupFailed("it lists no entries")
        pg.read_whole(path)
    except BackupFailed as why:
        raise BackupFailed(
            f"{path.name} is not a whole dump pg_restore can read ({why}); nothing was changed."
        ) from None
    pg.require_extensions(extensions)
    return Dump(path, len(entries), tuple(toc_tables(listing)), vouched)


def sweep(pg: Postgres, role: str, keep: Sequence[str] = ()) -> list[str]:
    """Drop the side databases of `role` (left by a killed restore or drill, or set aside earlier)."""
    dropped = [n for n in side_names(pg.target.database, role, pg.databases()) if n not in keep]
    for name in dropped:
        pg.drop(name)
    return dropped


def stage(pg: Postgres, dump: Dump, name: str, checks: RestoreChecks, jobs: int) -> str:
    """Restore `dump` into a new database `name` (extensions first) and judge it; on any failure the
    database is dropped again and BackupFailed names the problems. Returns pg_restore's warnings."""
    pg.create(name)
    try:
        pg.create_extensions(name, checks.extensions)
        warnings = pg.restore(dump.path, name, jobs)
        found = problems(checks, dump.tables, pg.measure(name, checks.tables))
        if found:
            said = warnings.strip().splitlines()
            tail = f" (pg_restore said: {said[-1].removeprefix('pg_restore: ')})" if said else ""
            raise BackupFailed(f"{dump.path.name} failed its checks: {'; '.join(found)}{tail}")
        return warnings
    except BaseException:
        with contextlib.suppress(BackupFailed):
            pg.drop(name)
        raise


def replace_live(pg: Postgres, staging: str, aside: str) -> str | None:
    """Rename the live database to `aside` and `staging` into its place; undone if the second step fails.
    Returns `aside`, or None when there was no live database (a restore onto a new server)."""
    live = pg.target.database
    if live not in pg.databases():
        pg.rename(staging, live)
        return None
    try:
        pg.allow_connections(live, False)  # no one reconnects between the disconnect and the rename
        pg.disconnect(live)
        pg.rename(live, aside)
    except BackupFailed as why:
        with contextlib.suppress(BackupFailed):
            pg.allow_connections(live, True)
        raise BackupFailed(f"could not set {live} aside ({why})") from None
    try:
        pg.disconnect(staging)
        pg.rename(staging, live)
    except BackupFailed as why:
        pg.rename(aside, live)
        pg.allow_connections(live, True)
        raise BackupFailed(f"could not move the restored database into place ({why})") from None
    pg.allow_connections(aside, True)
    return aside


def drill(pg: Postgres, dump: Dump, checks: RestoreChecks, jobs: int, now: datetime) -> dict[str, int]:
    """Restore into a scratch database with the restore's own checks, compare row counts with the live
    database, drop the scratch database. Returns the restored counts."""
    sweep(pg, DRILL)
    scratch = side_name(pg.target.database, DRILL, now, pg.databases())
    stage(pg, dump, scratch, checks, jobs)
    try:
        wanted = list(checks.tables) or pg.tables(pg.target.database)
        restored = pg.counts(scratch, wanted)
        found = count_mismatches(pg.counts(pg.target.database, wanted), restored)
        if found:
            raise BackupFailed(f"drill of {dump.path.name}: " + "; ".join(found))
        return restored
    finally:
        pg.drop(scratch)


def prepare(pg: Postgres, dump: Dump, checks: RestoreChecks, jobs: int, now: datetime, report: Report) -> str:
    """Restore `dump` into a staging database beside the live one and judge it there; nothing live is
    touched, so the stack may keep running. Returns the staging database's name."""
    left = sweep(pg, STAGING)
    if left:
        report(f"dropped {', '.join(left)}, left by an interrupted restore")
    staging = side_name(pg.target.database, STAGING, now, pg.databases())
    report(f"restoring {dump.path.name} into {staging}, beside {pg.target.database}")
    stage(pg, dump, staging, checks, jobs)
    return staging


@dataclass(frozen=True)
class Replaced:
    aside: str | None
    dropped: tuple[str, ...]  # earlier databases set aside, dropped now


def switch(
    pg: Postgres, staging: str, now: datetime, before: Callable[[str], None] = lambda staging: None
) -> Replaced:
    """Put the checked staging database in the live one's place; then drop what earlier restores set aside.
    `before` runs on the staging database just before (what must carry over from the live one). The caller
    has stopped the stack. On failure the staging database is dropped and the live one is as it was."""
    try:
        before(staging)
        aside = replace_live(pg, staging, side_name(pg.target.database, ASIDE, now, pg.databases()))
    except BackupFailed:
        with contextlib.suppress(BackupFailed):
            pg.drop(staging)
        raise
    return Replaced(aside, tuple(sweep(pg, ASIDE, keep=[aside] if aside else [])))
