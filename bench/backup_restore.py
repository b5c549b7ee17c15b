"""Backup, restore and drill timings on a test database, beside a bare pg_dump / pg_restore of the same data.

The database (created and dropped here, on this machine's Postgres) has an hstore extension and ROWS rows
over two tables. Reported: wall time of `protea-supervisor backup` (pg_dump + pg_restore --list + sha256 +
retention), `restore --yes` (proof of the dump, staging restore, checks, switch) and `restore --drill`,
and of the bare pg_dump and pg_restore they wrap (what checkpoint_db.sh ran). During `restore --yes` and
during today's drop / create / pg_restore (restore-from-backup.sh), a poller asks the live database for
its row count every few ms: the longest stretch without the full count is the time the live database
was gone or incomplete.
Run: .venv/bin/python bench/backup_restore.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import ps

PG = ["-h", "127.0.0.1", "-U", "postgres"]


def psql(database: str, sql: str) -> str:
    return subprocess.run(
        ["psql", "-X", "-q", "-tA", *PG, "-d", database, "-c", sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def timed(argv: list[str]) -> float:
    began = time.monotonic()
    subprocess.run(argv, check=True, capture_output=True)
    return time.monotonic() - began


@contextlib.contextmanager
def live_gap(database: str, rows: int) -> Iterator[list[float]]:
    """Poll `SELECT count(*) FROM items` until the block ends; yields a list that then holds the longest
    stretch (s) during which the answer was not `rows`."""
    out: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        longest, bad_since = 0.0, None
        while not stop.is_set():
            argv = ["psql", "-X", "-q", "-tA", *PG, "-d", database, "-c", "SELECT count(*) FROM items"]
            answer = subprocess.run(argv, capture_output=True, text=True)
            now = time.monotonic()
            if answer.returncode == 0 and answer.stdout.strip() == str(rows):
                if bad_since is not None:
                    longest = max(longest, now - bad_since)
                bad_since = None
            elif bad_since is None:
                bad_since = now
        out.append(longest if bad_since is None else max(longest, time.monotonic() - bad_since))

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield out
    finally:
        time.sleep(0.3)  # let the poller see the database back
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000)
    args = parser.parse_args()
    name = f"bench_{uuid.uuid4().hex[:8]}"
    root = Path(tempfile.mkdtemp(prefix="bbr-"))
    psql("postgres", f"CREATE DATABASE {name}")
    try:
        psql(name, "CREATE EXTENSION hstore")
        psql(name, "CREATE TABLE items (id serial PRIMARY KEY, attrs hstore, body text)")
        psql(name, "CREATE TABLE notes (id serial PRIMARY KEY, item int, note text)")
        psql(name, f"INSERT INTO items (attrs, body) SELECT hstore('n', g::text), md5(g::text) "
                   f"FROM generate_series(1, {args.rows}) g")  # fmt: skip
        psql(
            name,
            "INSERT INTO notes (item, note) SELECT g, repeat('x', 40) "
            f"FROM generate_series(1, {args.rows}) g",
        )
        size = psql(name, f"SELECT pg_size_pretty(pg_database_size('{name}'))")
        env = root / "db.env"
        env.write_text(f"PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/{name}\n")
        env.chmod(0o600)
        stack = root / "stack.toml"
        stack.write_text(
            'name = "bench"\n[paths]\nroot = "{stack_dir}"\n[env]\n'
            f'files = ["{env}"]\nrequired = []\nrequire_jwt_secret = false\n'
            f'[backup]\ndir = "{root}/backups"\nmin_free_gb = 0.001\nextensions = ["hstore"]\n'
            'check_tables = ["items", "notes"]\nmin_tables = 2\njobs = 2\n'
        )
        results = {}
        began = time.monotonic()
        ps(stack, "backup")
        results["protea-supervisor backup"] = time.monotonic() - began
        dump = next((root / "backups").glob("*.dump"))
        bare = root / "bare.dump"
        results["bare pg_dump"] = timed(
            ["pg_dump", *PG, "--format=custom", "--no-owner", f"--file={bare}", name]
        )
        began = time.monotonic()
        with live_gap(name, args.rows) as ours:
            ps(stack, "restore", "--yes", str(dump))
        results["protea-supervisor restore"] = time.monotonic() - began
        with live_gap(name, args.rows) as theirs:
            psql("postgres", f"DROP DATABASE {name} WITH (FORCE)")
            psql("postgres", f"CREATE DATABASE {name}")
            psql(name, "CREATE EXTENSION hstore")
            subprocess.run(["pg_restore", *PG, "--no-owner", "--jobs=2", f"--dbname={name}", str(bare)],
                           capture_output=True)  # fmt: skip
        scratch = f"{name}_bare"
        psql("postgres", f"CREATE DATABASE {scratch}")
        try:
            results["bare pg_restore (new db)"] = timed(
                ["pg_restore", *PG, "--no-owner", "--jobs=2", f"--dbname={scratch}", str(bare)]
            )
        finally:
            psql("postgres", f"DROP DATABASE IF EXISTS {scratch}")
        began = time.monotonic()
        ps(stack, "restore", "--drill", str(dump))
        results["protea-supervisor restore --drill"] = time.monotonic() - began
    finally:
        for db in psql("postgres", f"SELECT datname FROM pg_database WHERE datname LIKE '{name}%'").split():
            psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    print(
        f"test database: {2 * args.rows} rows in two tables, {size}; dump {dump.stat().st_size / 1e6:.1f} MB"
    )
    for what, seconds in results.items():
        print(f"{what:<36} {seconds:>7.2f} s")
    overhead = results["protea-supervisor backup"] / results["bare pg_dump"]
    print(f"backup with its verification and checksum: {overhead:.2f}x a bare pg_dump")
    print(
        f"live database gone or incomplete: restore {ours[0]:.3f} s, "
        f"drop/create/pg_restore {theirs[0]:.3f} s "
        f"({theirs[0] / max(ours[0], 1e-3):.0f}x longer)"
    )


if __name__ == "__main__":
    main()
