"""Backup, restore and the drill against this machine's real PostgreSQL, with a real supervisord where the
stack is running. A restore never harms the live database: every refusal and every failed check leaves its
tables and rows exactly as before and the stack running."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, Stack, psql, stack_file, toml_dump

from protea_supervisor.hosts import declared
from protea_supervisor.supervisord.control import Supervisor

pytestmark = pytest.mark.integration


def databases() -> list[str]:
    return psql("postgres", "SELECT datname FROM pg_database ORDER BY 1").split()


@pytest.fixture
def database() -> Iterator[str]:
    name = f"pst_{uuid.uuid4().hex[:8]}"
    psql("postgres", f"CREATE DATABASE {name}")
    psql(name, "CREATE EXTENSION hstore")
    psql(name, "CREATE TABLE items (id serial PRIMARY KEY, attrs hstore)")
    psql(name, "CREATE TABLE notes (id serial PRIMARY KEY, body text)")
    psql(name, "INSERT INTO items (attrs) SELECT hstore('n', g::text) FROM generate_series(1, 500) g")
    psql(name, "INSERT INTO notes (body) SELECT 'note ' || g FROM generate_series(1, 120) g")
    yield name
    for left in [d for d in databases() if d.startswith(name)]:
        psql("postgres", f"DROP DATABASE IF EXISTS {left} WITH (FORCE)")


def backup_stack(root: Path, database: str, extensions: list[str]) -> Stack:
    env_file = root / "db.env"
    env_file.write_text(f"PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/{database}\n")
    env_file.chmod(0o600)
    backup = {"dir": str(root / "backups"), "keep": 2, "min_free_gb": 0.001, "extensions": extensions,
              "check_tables": ["items", "notes"], "min_tables": 2, "jobs": 2}  # fmt: skip
    return Stack(stack_file(root, env_files=[str(env_file)], extra={"backup": backup}))


def backed_up(root: Path, database: str) -> tuple[Stack, Path]:
    """A stack over `database` (hstore first) and one `protea-supervisor backup` of it."""
    stack = backup_stack(root, database, ["hstore"])
    made = stack.ps("backup")
    assert made.code == 0, made.both
    return stack, next((root / "backups").glob("*.dump"))


def set_backup(stack: Stack, **changes: object) -> None:
    """Change backup.* in the stack file in place (its ports stay those supervisord runs with)."""
    data = tomllib.loads(stack.file.read_text())
    data["backup"].update(changes)
    stack.file.write_text(toml_dump(data) + "\n")


def counts(database: str) -> tuple[str, str]:
    return psql(database, "SELECT count(*) FROM items"), psql(database, "SELECT count(*) FROM notes")


def snapshot(database: str) -> dict[str, str]:
    """Every public table with its row count and a digest of its rows (two psql calls in all)."""
    tables = psql(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").split()
    if not tables:
        return {}
    digest = " UNION ALL ".join(
        f"SELECT '{t}', count(*) || ':' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {t} x"
        for t in tables
    )
    return dict(line.split("|", 1) for line in psql(database, digest).splitlines())


def pids(stack: Stack) -> dict[str, int]:
    """From supervisord over its socket: a CLI run per check would cost a Python start each time."""
    infos = Supervisor(stack.root / "run" / "supervisor.sock").all_process_info()
    return {i["name"]: i["pid"] for i in infos if i["pid"]}


def all_running(stack: Stack) -> bool:
    status = stack.status()
    return all(status[n]["state"] == "RUNNING" for n in ("gate", "api", "web", "tunnel", "worker-jobs"))


def test_backup_then_restore_round_trips_the_rows_and_keeps_the_replaced_database_aside(
    short_tmp: Path, database: str
) -> None:
    stack = backup_stack(short_tmp, database, ["hstore"])
    made = stack.ps("backup", "--label", "test")
    assert made.code == 0, made.both
    dumps = sorted((short_tmp / "backups").glob("protea-*-test.dump"))
    assert len(dumps) == 1 and Path(str(dumps[0]) + ".sha256").exists()
    psql(database, "DELETE FROM items WHERE id > 10")
    restored = stack.ps("restore", "--yes", str(dumps[0]))
    assert restored.code == 0, restored.both
    assert counts(database) == ("500", "120")
    # The database it replaced is kept aside, as it was, until the next successful restore.
    aside = [d for d in databases() if d.startswith(f"{database}_pre")]
    assert len(aside) == 1 and aside[0] in restored.out and counts(aside[0]) == ("10", "120")
    again = stack.ps("restore", "--yes", str(dumps[0]))
    assert again.code == 0 and f"dropped {aside[0]}" in again.out, again.both
    assert [d for d in databases() if d.startswith(f"{database}_")] != aside
    assert len([d for d in databases() if d.startswith(f"{database}_")]) == 1

    drill = stack.ps("restore", "--drill", str(dumps[0]))
    assert drill.code == 0 and "2 tables match" in drill.out, drill.both
    # Its scratch database is gone (only this test's: other tests drill beside it on other workers).
    assert not [d for d in databases() if d.startswith(f"{database}_drl")]
    # Retention keeps the newest two.
    for label in ("a", "b"):
        assert stack.ps("backup", "--label", label).code == 0
    assert len(list((short_tmp / "backups").glob("*.dump"))) == 2

    # Disaster recovery onto a server that lost the database: the restore creates it.
    psql("postgres", f"DROP DATABASE {database} WITH (FORCE)")
    newest = sorted((short_tmp / "backups").glob("*.dump"))[-1]
    recovered = stack.ps("restore", "--yes", str(newest))
    assert recovered.code == 0, recovered.both
    assert counts(database) == ("500", "120")


def test_a_dump_without_its_extension_restores_only_because_the_extension_comes_first(
    short_tmp: Path, database: str
) -> None:
    # A schema-only selection leaves CREATE EXTENSION out of the dump, as when the restoring role cannot
    # create it: the data can only land if the extension exists first.
    dump = short_tmp / "public-only.dump"
    subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--format=custom", "--no-owner",
                    "--schema=public", f"--file={dump}", database], check=True)  # fmt: skip
    psql(database, "DELETE FROM notes WHERE id > 7")
    before = snapshot(database)
    (short_tmp / "without").mkdir()
    without = backup_stack(short_tmp / "without", database, [])
    failed = without.ps("restore", "--yes", str(dump))
    assert failed.code == 9 and "items missing" in failed.err, failed.both
    assert "the live database and the stack are as they were" in failed.err
    assert snapshot(database) == before
    with_ext = backup_stack(short_tmp, database, ["hstore"])
    restored = with_ext.ps("restore", "--yes", str(dump))
    assert restored.code == 0, restored.both
    assert counts(database) == ("500", "120")


def test_no_bad_dump_touches_the_live_database_or_the_running_stack(
    short_tmp: Path, database: str, supervisord: Callable[[Stack], None]
) -> None:
    stack, good = backed_up(short_tmp, database)
    data = good.read_bytes()
    # The live database moved on since the dump: a restore that went ahead would show.
    psql(database, "DELETE FROM items WHERE id > 300")
    psql(database, "CREATE TABLE later (id int)")
    before = snapshot(database)
    supervisord(stack)
    assert stack.ps("up").code == 0
    running = pids(stack)

    bad = short_tmp / "bad"
    bad.mkdir()
    (bad / "notadump.dump").write_text("hello\n")
    (bad / "truncated.dump").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    (bad / "flipped.dump").write_bytes(bytes(flipped))  # no .sha256 beside it
    (bad / "empty-sidecar.dump").write_bytes(data)
    (bad / "empty-sidecar.dump.sha256").write_text("")
    (bad / "wrong-sidecar.dump").write_bytes(data)
    (bad / "wrong-sidecar.dump.sha256").write_text("0" * 64 + "  wrong-sidecar.dump\n")
    cases = {
        "notadump.dump": "not a whole dump pg_restore can read",
        "truncated.dump": "not a whole dump pg_restore can read",
        # The flip lands in the uncompressed statement that loads a table, which reads whole: the staging
        # database finds the table empty.
        "flipped.dump": "failed its checks",
        "empty-sidecar.dump": "holds no SHA-256",
        "wrong-sidecar.dump": "the dump is damaged",
    }
    for name, why in cases.items():
        refused = stack.ps("restore", "--yes", str(bad / name))
        assert refused.code == 9 and why in refused.err and "nothing was changed" in refused.err, refused.both
        assert len(refused.err.strip().splitlines()) == 1, refused.err
        assert snapshot(database) == before, name
        assert pids(stack) == running, f"{name}: refused before anything was stopped"
        assert [d for d in databases() if d.startswith(f"{database}_")] == [], name

    # An extension the server lacks, and a dump that restores but fails the checks (a check table it
    # lacks, found in the staging database): both refused while the stack runs on.
    set_backup(stack, extensions=["hstore", "vector"])
    missing = stack.ps("restore", "--yes", str(good))
    assert missing.code == 9 and "extension vector is not available" in missing.err, missing.both
    set_backup(stack, extensions=["hstore"], check_tables=["items", "notes", "later"])
    failed = stack.ps("restore", "--yes", str(good))
    assert failed.code == 9 and "table later missing" in failed.err, failed.both
    assert "the live database and the stack are as they were" in failed.err
    assert snapshot(database) == before and pids(stack) == running
    assert [d for d in databases() if d.startswith(f"{database}_")] == []

    # A good restore on the running stack ends with the stack running; the listeners never stopped.
    set_backup(stack, check_tables=["items", "notes"])
    gate_pid = pids(stack)["gate"]
    restored = stack.ps("restore", "--yes", str(good))
    assert restored.code == 0, restored.both
    assert "starting the stack through the gate" in restored.out
    assert counts(database) == ("500", "120") and "later" not in snapshot(database)
    assert all_running(stack) and pids(stack)["gate"] == gate_pid
    assert stack.ps("gate", "retry").code == 0 and stack.ps("up").code == 0


def test_a_switch_that_fails_after_the_stop_brings_the_stack_back_and_keeps_the_live_database(
    short_tmp: Path, database: str, supervisord: Callable[[Stack], None]
) -> None:
    stack, good = backed_up(short_tmp, database)
    psql(database, "DELETE FROM items WHERE id > 300")
    before = snapshot(database)
    supervisord(stack)
    assert stack.ps("up").code == 0
    # The restore runs as a role that may create databases but does not own the live one: the staging
    # restore succeeds, and the switch, after the stop, is refused.
    role = f"{database}_r"
    psql("postgres", f"CREATE ROLE {role} LOGIN CREATEDB")
    (short_tmp / "db.env").write_text(f"PROTEA_DB_URL=postgresql://{role}@127.0.0.1:5432/{database}\n")
    try:
        failed = stack.ps("restore", "--yes", str(good))
        assert [d for d in databases() if d.startswith(f"{database}_")] == []
    finally:
        psql("postgres", f"DROP ROLE {role}")
    assert failed.code == 9, failed.both
    assert f"could not set {database} aside" in failed.err and "must be owner" in failed.err
    assert "the stack is back up" in failed.err and "the live database was not changed" in failed.err
    assert failed.err.count("the live database was not changed") == 1, failed.err
    assert snapshot(database) == before and all_running(stack)
    assert [d for d in databases() if d.startswith(f"{database}_")] == []


def test_the_drill_and_the_restore_refuse_a_misspelled_check_table_alike(
    short_tmp: Path, database: str
) -> None:
    stack, dump = backed_up(short_tmp, database)
    set_backup(stack, check_tables=["items", "no_such_table"])
    before = snapshot(database)
    drill = stack.ps("restore", "--drill", str(dump))
    restore = stack.ps("restore", "--yes", str(dump))
    for result in (drill, restore):
        assert result.code == 9 and "table no_such_table missing" in result.err, result.both
    assert snapshot(database) == before
    assert [d for d in databases() if d.startswith(f"{database}_")] == []
    (short_tmp / "sys").mkdir()
    system = backup_stack(short_tmp / "sys", "postgres", [])
    refused = system.ps("restore", "--yes", str(dump))
    assert refused.code == 9 and "system database" in refused.err, refused.both


def test_two_backups_at_once_both_land_under_distinct_private_names(short_tmp: Path, database: str) -> None:
    stack = backup_stack(short_tmp, database, ["hstore"])
    folder = short_tmp / "backups"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)  # as an earlier version left it
    (folder / "protea-20260101T000000.dump").write_bytes(b"old")
    (folder / "protea-20260101T000000.dump").chmod(0o644)
    env = dict(os.environ)
    env.pop("PROTEA_STACK", None)
    both = [
        subprocess.Popen(
            [PS, "--stack", str(stack.file), "backup"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in both]
    assert [code for code, _, _ in results] == [0, 0], results
    dumps = sorted(
        p.name for p in folder.glob("protea-2026*.dump") if p.name != "protea-20260101T000000.dump"
    )
    assert len(dumps) == 2, dumps
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for path in folder.iterdir():
        if path.name.startswith("protea-"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert any("made" in out and "private" in out for _, out, _ in results)
    for name in dumps:
        assert stack.ps("restore", "--drill", str(folder / name)).code == 0


def test_a_restore_keeps_the_declaration_the_live_database_had(short_tmp: Path, database: str) -> None:
    """The declared revision lives in the server's database, which a restore replaces: the dump's
    declaration is older than what the server runs, and a node would follow it back. The restored database
    carries the live one's newest declaration from the moment it is switched in."""
    url = f"postgresql://postgres@127.0.0.1:5432/{database}"
    old, new = "a" * 40, "b" * 40
    declared.declare(url, "PROTEA_DB_URL", old, "0" * 64, "server-1")
    stack, dump = backed_up(short_tmp, database)
    declared.declare(url, "PROTEA_DB_URL", new, "1" * 64, "server-1")
    restored = stack.ps("restore", "--yes", str(dump))
    assert restored.code == 0, restored.both
    assert counts(database) == ("500", "120")  # the dump's rows
    now = declared.current(url, "PROTEA_DB_URL")
    assert now is not None and (now.revision, now.migrations) == (new, "1" * 64), now
    assert f"kept the declaration of {new[:10]}" in restored.out, restored.out
