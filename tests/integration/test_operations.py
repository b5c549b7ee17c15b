"""Operations on real parts: the metrics listener on a real supervisord, `queues` against this machine's
RabbitMQ management API, and backup/restore against its Postgres."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, free_port, stack_file, wait_for
from rabbit import WORKER_COMMAND, connect, delete_queue

pytestmark = pytest.mark.integration
SECRET = "s3cret-Value-that-must-not-leak"


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_scrape_reflects_a_crash_and_restart_and_carries_no_secret(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    env_file = short_tmp / "protea.env"
    env_file.write_text(f"PROTEA_JWT_SECRET={SECRET}\nPROTEA_EXTRA={SECRET}\n")
    env_file.chmod(0o600)
    port = free_port()
    stack = Stack(
        stack_file(short_tmp, queues={"protea.ping": {}}, env_files=[str(env_file)],
                   extra={"metrics": {"enabled": True, "port": port}})
    )  # fmt: skip
    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(lambda: sample(scrape(port), "protea_process_up", process="api:api") == 1.0, 20, "api up")
    before = sample(scrape(port), "protea_process_restarts_total", process="api:api") or 0.0
    os.kill(stack.status()["api"]["pid"], signal.SIGKILL)  # a crash; autorestart brings it back
    wait_for(
        lambda: (
            (sample(scrape(port), "protea_process_restarts_total", process="api:api") or 0) == before + 1
            and sample(scrape(port), "protea_process_up", process="api:api") == 1.0
        ),
        30,
        "the restart to show",
    )
    text = scrape(port)
    assert (sample(text, "protea_process_rss_bytes", process="api:api") or 0) > 1e6
    assert sample(text, "protea_gate_phase", phase="done") == 1.0
    assert sample(text, "protea_stack_owner", owner="free") == 1.0
    assert SECRET not in text


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = f"protea.qt{uuid.uuid4().hex[:8]}."
    yield prefix
    delete_queue(prefix + "jobs")


def monitored_stack(root: Path, prefix: str, api: str = "http://127.0.0.1:15672") -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    return Stack(
        stack_file(
            root,
            queues={prefix + "jobs": {"processes": 1, "command": WORKER_COMMAND, "starved_after": 600}},
            extra={"monitor": {"rabbit_api": api, "queue_prefix": prefix}},
        )
    )


@pytest.mark.slow
def test_queues_flags_a_stalled_queue_and_a_consumer_mismatch_and_exits_2_without_a_broker(
    short_tmp: Path, supervisord: Callable[[Stack], None], prefix: str
) -> None:
    stack = monitored_stack(short_tmp, prefix)
    queue = prefix + "jobs"
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    for n in range(3):
        channel.basic_publish("", queue, b'{"id": %d, "seconds": 0.1}' % n)
    # No worker runs yet: messages and no consumer.
    wait_for(lambda: "stalled" in stack.ps("queues").out, 30, "the stalled verdict")
    stalled = stack.ps("queues")
    assert stalled.code == 1 and "3 messages and no consumer" in stalled.out, stalled.both

    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(lambda: stack.ps("queues").code == 0, 30, "a healthy queue once its worker consumes")
    # A stray consumer: two consumers, one RUNNING worker.
    channel.basic_consume(queue, lambda *args: None)
    wait_for(lambda: "mismatch" in stack.ps("queues").out, 30, "the mismatch")
    mismatch = stack.ps("queues")
    assert mismatch.code == 1 and "2 consumers, 1 worker-" in mismatch.out
    connection.close()

    closed = monitored_stack(short_tmp / "other", prefix, f"http://127.0.0.1:{free_port()}")
    unreachable = closed.ps("queues")
    assert unreachable.code == 2 and "unreachable" in unreachable.err


def psql(database: str, sql: str) -> str:
    result = subprocess.run(
        ["psql", "-X", "-q", "-tA", "-h", "127.0.0.1", "-U", "postgres", "-d", database, "-c", sql],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


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
    psql("postgres", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def backup_stack(root: Path, database: str, extensions: list[str]) -> Stack:
    env_file = root / "db.env"
    env_file.write_text(f"PROTEA_DB_URL=postgresql://postgres@127.0.0.1:5432/{database}\n")
    env_file.chmod(0o600)
    backup = {"dir": str(root / "backups"), "keep": 2, "min_free_gb": 0.001, "extensions": extensions,
              "check_tables": ["items", "notes"], "min_tables": 2, "jobs": 2}  # fmt: skip
    return Stack(stack_file(root, env_files=[str(env_file)], extra={"backup": backup}))


def counts(database: str) -> tuple[str, str]:
    return psql(database, "SELECT count(*) FROM items"), psql(database, "SELECT count(*) FROM notes")


def test_backup_then_restore_round_trips_the_rows_with_the_extension_first(
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
    drill = stack.ps("restore", "--drill", str(dumps[0]))
    assert drill.code == 0 and "2 tables match" in drill.out, drill.both
    assert "_drill_" not in psql("postgres", "SELECT string_agg(datname, ',') FROM pg_database")
    # Retention keeps the newest two.
    for label in ("a", "b"):
        assert stack.ps("backup", "--label", label).code == 0
    assert len(list((short_tmp / "backups").glob("*.dump"))) == 2


def test_a_dump_without_its_extension_restores_only_because_the_extension_comes_first(
    short_tmp: Path, database: str
) -> None:
    # A schema-only selection leaves CREATE EXTENSION out of the dump, as when the restoring role cannot
    # create it: the data can only land if the extension exists first.
    dump = short_tmp / "public-only.dump"
    subprocess.run(["pg_dump", "-h", "127.0.0.1", "-U", "postgres", "--format=custom", "--no-owner",
                    "--schema=public", f"--file={dump}", database], check=True)  # fmt: skip
    (short_tmp / "without").mkdir()
    without = backup_stack(short_tmp / "without", database, [])
    failed = without.ps("restore", "--yes", str(dump))
    assert failed.code == 9 and "items missing" in failed.err, failed.both
    with_ext = backup_stack(short_tmp, database, ["hstore"])
    restored = with_ext.ps("restore", "--yes", str(dump))
    assert restored.code == 0, restored.both
    assert counts(database) == ("500", "120")


def test_restore_names_a_missing_extension_and_refuses_during_an_export(
    short_tmp: Path, database: str
) -> None:
    stack = backup_stack(short_tmp, database, ["hstore", "vector"])
    assert stack.ps("backup").code == 0
    dump = next((short_tmp / "backups").glob("*.dump"))
    missing = stack.ps("restore", "--yes", str(dump))
    assert missing.code == 9 and "extension vector is not available" in missing.err, missing.both
    assert counts(database) == ("500", "120")  # refused before anything was dropped
    assert stack.ps("lock", "acquire", "export", "exp-9", "export").code == 0
    refused = stack.ps("restore", "--yes", str(dump))
    assert refused.code == 2 and "exp-9" in refused.err


def test_restore_on_a_running_stack_leaves_it_running_and_a_refused_one_touches_nothing(
    short_tmp: Path, database: str, supervisord: Callable[[Stack], None]
) -> None:
    stack = backup_stack(short_tmp, database, ["hstore"])
    assert stack.ps("backup").code == 0
    dump = next((short_tmp / "backups").glob("*.dump"))
    supervisord(stack)
    assert stack.ps("up").code == 0
    before = {n: p["pid"] for n, p in stack.status().items() if p["pid"]}

    # Refused before anything is stopped: a file that is not a dump, and a byte-flipped dump.
    bogus = short_tmp / "notadump.dump"
    bogus.write_text("hello\n")
    flipped = short_tmp / "flipped.dump"
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (short_tmp / "flipped.dump.sha256").write_text(Path(str(dump) + ".sha256").read_text())
    for refused_dump, why in ((bogus, "is not a dump pg_restore can read"), (flipped, "damaged")):
        refused = stack.ps("restore", "--yes", str(refused_dump))
        assert refused.code == 9 and why in refused.err and "nothing was changed" in refused.err.lower(), (
            refused.both
        )
        assert {n: p["pid"] for n, p in stack.status().items() if p["pid"]} == before
    assert counts(database) == ("500", "120")

    psql(database, "DELETE FROM items WHERE id > 10")
    restored = stack.ps("restore", "--yes", str(dump))
    assert restored.code == 0, restored.both
    assert counts(database) == ("500", "120")
    status = stack.status()
    assert status["gate"]["state"] == "RUNNING"  # the listeners were never stopped
    for name in ("api", "web", "tunnel", "worker-jobs"):
        assert status[name]["state"] == "RUNNING", name
    assert stack.ps("gate", "retry").code == 0 and stack.ps("up").code == 0
