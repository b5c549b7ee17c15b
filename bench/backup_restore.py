"""Backup, restore and drill timings on a test database, beside a bare pg_dump / pg_restore of the same data.

The database (created and dropped here, on this machine's Postgres) has an hstore extension and ROWS rows
over two tables. Reported: wall time of `protea-supervisor backup` (pg_dump + pg_restore --list + sha256 +
retention), `restore --yes` (checks, drop/create, extension first, pg_restore, checks) and `restore
--drill`, and of the bare pg_dump and pg_restore they wrap (what checkpoint_db.sh ran).
Run: .venv/bin/python bench/backup_restore.py [--rows 200000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
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
        ps(stack, "restore", "--yes", str(dump))
        results["protea-supervisor restore"] = time.monotonic() - began
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
        psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    print(
        f"test database: {2 * args.rows} rows in two tables, {size}; dump {dump.stat().st_size / 1e6:.1f} MB"
    )
    for what, seconds in results.items():
        print(f"{what:<36} {seconds:>7.2f} s")
    overhead = results["protea-supervisor backup"] / results["bare pg_dump"]
    print(f"backup with its verification and checksum: {overhead:.2f}x a bare pg_dump")


if __name__ == "__main__":
    main()
