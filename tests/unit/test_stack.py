"""The stack description: PROTEA defaults, host overrides, and one clear sentence per bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile import overrides
from protea_supervisor.stackfile.files import builtin_stack_text, parse_toml
from protea_supervisor.stackfile.parse_programs import queue_program_name
from protea_supervisor.stackfile.parser import parse_stack
from protea_supervisor.stackfile.stack import HostFacts, Stack

HOST = HostFacts(home=Path("/home/op"), python="/opt/venv/bin/python")
DEFAULTS = ("built-in protea stack", parse_toml(builtin_stack_text("protea"), "defaults"))


def build(*layers: tuple[str, dict[str, Any]]) -> Stack:
    return parse_stack([DEFAULTS, *layers], HOST)


def host(text: str) -> tuple[str, dict[str, Any]]:
    return ("/etc/protea/host.toml", parse_toml(text, "/etc/protea/host.toml"))


def refused(text: str) -> str:
    with pytest.raises(StackError) as caught:
        build(host(text))
    return str(caught.value)


def test_protea_defaults_name_every_program_and_queue_like_manage_sh() -> None:
    stack = build()
    assert [q.name for q in stack.queues] == [
        "protea.ping", "protea.jobs", "protea.training", "protea.embeddings", "protea.embeddings.batch",
        "protea.embeddings.write", "protea.predictions", "protea.predictions.batch", "protea.predictions.write",
        "protea.evaluations", "reaper",
    ]  # fmt: skip
    names = [name for q in stack.queues for name in q.process_names()]
    assert names == [
        "worker-ping", "worker-jobs", "worker-training", "worker-embeddings-coord", "worker-embeddings-batch-1",
        "worker-embeddings-write", "worker-predictions-coord", "worker-predictions-batch-1",
        "worker-predictions-write", "worker-evaluations", "worker-reaper",
    ]  # fmt: skip
    assert (
        stack.queue("protea.ping").command == "/home/op/Thesis2/worktrees/protea-deploy/.venv/bin/python "
        "scripts/worker.py --queue protea.ping"
    )
    assert stack.program("api").command.startswith(
        "/home/op/Thesis2/worktrees/protea-deploy/.venv/bin/uvicorn "
    )
    assert "--root-path /api-proxy" in stack.program("api").command
    assert stack.program("migrate").startsecs == 0
    assert stack.paths.logs == Path("/home/op/Thesis2/worktrees/protea-deploy/logs")
    assert stack.env.files == (
        Path("/home/op/.secrets/protea.env"),
        Path("/home/op/Thesis2/worktrees/protea-deploy/.env.local"),
    )
    assert stack.probes.api_ready_timeout == 120
    assert stack.deploy.retry_ladder == (30, 120, 300)
    assert min(q.stop_grace for q in stack.queues) >= 30


def test_queue_names_follow_manage_sh_slugs() -> None:
    assert queue_program_name("protea.predictions.batch") == "worker-predictions-batch"
    assert queue_program_name("reaper") == "worker-reaper"


def test_host_file_overrides_any_part_and_keeps_the_rest() -> None:
    stack = build(
        host("""
[paths]
root = "/srv/protea"
[queues."protea.predictions.batch"]
processes = 4
[queues."protea.export"]
[programs.tunnel]
enabled = false
""")
    )
    assert stack.paths.venv == Path("/srv/protea/.venv")
    assert stack.queue("worker-predictions-batch").processes == 4
    assert stack.queue("protea.export").program == "worker-export"
    assert stack.program("tunnel").enabled is False
    assert stack.program("api").stop_grace == 30
    assert stack.sources == ("built-in protea stack", "/etc/protea/host.toml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[paths]\nroots = '/x'", "/etc/protea/host.toml: unknown key paths.roots; expected one of:"),
        ("colour = 'blue'", "unknown key colour;"),
        (
            "[programs.frontend]\ncommand = 'x'",
            "unknown program programs.frontend; expected one of migrate",
        ),
        ("[workers]\nstop_grace = '300'", "workers.stop_grace must be an integer, got '300'"),
        (
            '[queues."protea.ping"]\nprocesses = -1',
            'queues."protea.ping".processes must be 0 to 100 (each worker is a process holding its model and connections), got -1',
        ),
        ('[queues."protea.ping"]\nprocesses = 2', "an unnumbered queue runs one process named worker-ping"),
        ('[queues."protea.ping"]\n[queues."protea.ping"]', "not valid TOML"),
        (
            '[queues."ping"]',
            "queues.ping makes program 'worker-ping', which is already queues.\"protea.ping\"",
        ),
        (
            "[probes]\napi_ready_url = 'http://127.0.0.1:70000/jobs'",
            "probes.api_ready_url has a port out of range",
        ),
        ("[probes]\nweb_url = 'localhost:3000'", "probes.web_url must be an http(s) URL"),
        (
            "[control]\ninet_port = 99999",
            "control.inet_port must be 0 to 65535 (0 turns the inet server off), got 99999",
        ),
        (
            "[control]\ninet_port = 9001\nusername = 'ops'\npassword_sha = 'plain'",
            "control.password_sha must be",
        ),
        ("[control]\ninet_port = 9001", "control.username must be set"),
        ("[workers]\ncommand = 'run {queeu}'", "workers.command uses unknown placeholder {queeu}"),
        (
            "[deploy]\nbuild_command = 'npm run {target}'",
            "deploy.build_command uses unknown placeholder {target}",
        ),
        ("[workers]\nstop_signal = 'TERMINATE'", "workers.stop_signal must be one of TERM"),
        (
            '[programs.api]\ncommand = "uvicorn \'unbalanced"',
            "programs.api.command is not a valid command line",
        ),
        ("[programs.api.environment]\nPROTEA_JWT_SECRET = 'x'", "looks like a secret; put it in an env file"),
        ("[paths]\nrun = 'relative/run'", None),
        ("[deploy]\nretry_ladder = [30, -1]", "deploy.retry_ladder must be 0 to 86400, got -1"),
        (
            "[lock]\nflock_timeout = 0",
            "lock.flock_timeout must be 0.001 to 3600 (the shell tool's flock -w), got 0",
        ),
        ("[programs.web]\nrequires_file = ''", "needs both requires_file and fallback_command"),
        (
            "[deploy]\napi_canary_command = 'uvicorn x --port 8001'",
            "deploy needs both api_canary_command and",
        ),
        (
            "[deploy]\napi_canary_command = 'uvicorn x'\napi_canary_url = 'http://127.0.0.1:8000/jobs'",
            "deploy.api_canary_url must name a port of its own, not the serving API's (127.0.0.1:8000",
        ),
        (
            "[tunnel_watch]\nprobe_interval = 0",
            "tunnel_watch.probe_interval must be 1 to 3600, got 0",
        ),
        (
            "[tunnel_watch]\nbackoff_max = 10",
            "tunnel_watch.backoff_max must be at least tunnel_watch.backoff_initial",
        ),
        (
            "[tunnel_watch]\ndown_statuses = [99]",
            "tunnel_watch.down_statuses must be 100 to 599 (HTTP status codes), got 99",
        ),
        (
            "[programs.web]\nsocket = 'tcp://127.0.0.1:3000'",
            "programs.web.socket is for programs.api only",
        ),
        (
            "[programs.api]\nsocket = '127.0.0.1:8000'",
            "programs.api.socket must be tcp://HOST:PORT with a port from 1 to 65535, got '127.0.0.1:8000'",
        ),
        (
            "[programs.api]\nsocket = 'tcp://127.0.0.1:70000'",
            "programs.api.socket must be tcp://HOST:PORT with a port from 1 to 65535",
        ),
    ],
)
def test_bad_input_names_file_key_and_expectation(text: str, expected: str | None) -> None:
    if text.startswith('[queues."protea.ping"]\n[queues'):
        # tomllib refuses a table declared twice; the loader turns that into one sentence with the file.
        with pytest.raises(StackError, match="not valid TOML"):
            parse_toml(text, "/etc/protea/host.toml")
        return
    if expected is None:
        # A relative run dir is taken relative to the root, not refused.
        assert build(host(text)).paths.run == Path("/home/op/Thesis2/worktrees/protea-deploy/relative/run")
        return
    message = refused(text)
    assert expected in message
    assert "/etc/protea/host.toml" in message or "not valid TOML" in message
    assert "\n" not in message


def test_the_commands_a_tick_runs_take_the_placeholders() -> None:
    stack = build(
        host(
            "[deploy]\ninstall_command = '{venv}/bin/python -m pip install -r requirements.lock'\n"
            "build_command = 'npm ci && echo ${{HOME}}'\npost_install_command = '{python} -V'\n"
            "escalation_command = 'notify {root}'"
        )
    )
    root = "/home/op/Thesis2/worktrees/protea-deploy"
    assert stack.deploy.install_command == f"{root}/.venv/bin/python -m pip install -r requirements.lock"
    assert stack.deploy.build_command == "npm ci && echo ${HOME}"
    assert (
        stack.deploy.post_install_command.endswith(" -V")
        and "{python}" not in stack.deploy.post_install_command
    )
    assert stack.deploy.escalation_command == f"notify {root}"


def test_error_names_the_file_that_set_the_key_not_the_last_one() -> None:
    first = ("/etc/protea/a.toml", parse_toml("[workers]\nstop_grace = 0", "a"))
    second = ("/etc/protea/b.toml", parse_toml("[paths]\nroot = '/srv'", "b"))
    with pytest.raises(StackError, match=r"^/etc/protea/a.toml: workers.stop_grace must be 1 to 86400"):
        build(first, second)


def test_secret_looking_value_of_wrong_type_is_not_echoed() -> None:
    message = refused("[programs.api.environment]\nAPI_TOKEN = 12345")
    assert "12345" not in message


def test_too_long_run_dir_is_refused_before_supervisord_fails_to_bind() -> None:
    assert "too long for a unix socket path" in refused(f"[paths]\nrun = '/{'x' * 120}'")


def test_shipped_example_host_file_parses() -> None:
    example = Path(__file__).parents[2] / "deploy" / "protea-host.example.toml"
    stack = build((str(example), parse_toml(example.read_text(), str(example))))
    assert stack.queue("protea.training.write").program == "worker-export-write"
    assert stack.queue("protea.predictions.batch").process_names() == (
        "worker-predictions-batch-1",
        "worker-predictions-batch-2",
    )


def test_a_node_stack_is_refused_while_it_runs_what_only_the_server_runs() -> None:
    assert refused('[host]\nrole = "node"\n') == (
        '/etc/protea/host.toml: programs.migrate.enabled must be false on a node (host.role = "node" runs only '
        "workers)."
    )
    off = "".join(f"[programs.{role}]\nenabled = false\n" for role in ("migrate", "api", "web", "tunnel"))
    node = build(host(f'[host]\nrole = "node"\nname = "gpu-box"\nrevision_guard = true\n{off}'))
    assert node.host.node and node.host.name == "gpu-box" and node.host.revision_guard
    assert build().host.role == "server" and build().host.name == "localhost"
    assert refused('[host]\nrole = "worker"\n') == (
        "/etc/protea/host.toml: host.role must be one of server, node, got 'worker'."
    )


def test_shipped_example_node_file_parses_and_runs_only_the_compute_queues() -> None:
    example = Path(__file__).parents[2] / "deploy" / "protea-node.example.toml"
    stack = build((str(example), parse_toml(example.read_text(), str(example))))
    assert stack.host.node and stack.host.revision_guard and not stack.host.declare_revision
    assert not any(p.enabled for p in stack.programs)
    running = {q.name: q.processes for q in stack.queues if q.processes}
    assert running == {
        "protea.embeddings.batch": 1, "protea.predictions.batch": 1, "protea.evaluations": 1, "protea.jobs": 3,
    }  # fmt: skip
    assert stack.workers.stop_signal == "INT" and stack.workers.stop_grace == 120


def test_the_demo_stack_needs_nothing_but_python() -> None:
    """Quick start: the demo runs with Python and git alone. Nothing in it may reach for Postgres (a singleton
    queue's lock, the revision guard's declaration, heartbeats) or a network beyond loopback."""
    demo = build(("demo", parse_toml(builtin_stack_text("demo"), "demo")))
    running = [q for q in demo.queues if q.processes]
    assert len(running) == 11 and not any(q.singleton for q in running)
    assert not (demo.host.revision_guard or demo.host.heartbeat or demo.host.declare_revision)
    assert demo.probes.infra_from_env == () and not demo.deploy.enabled


def _schema_keys() -> list[str]:
    from protea_supervisor.stackfile.schema import dotted_keys

    return [key for key, _ in dotted_keys()]


def test_every_key_has_one_default_a_derived_default_or_is_required() -> None:
    from protea_supervisor.stackfile.schema import DEFAULTS, DERIVED, REQUIRED

    keys = _schema_keys()
    for key in keys:
        assert (key in DEFAULTS) + (key in DERIVED) + (key in REQUIRED) == 1, key
    assert set(DEFAULTS) | set(DERIVED) | REQUIRED == set(keys)


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        ("control.log_retention_days", 30, lambda s: s.control.log_retention_days),
        ("tunnel_watch.failures", 7, lambda s: s.tunnel_watch.failures),
        (
            "programs.*.stop_grace",
            42,
            lambda s: next(p for p in s.programs if p.role == "migrate").stop_grace,
        ),
        ("queues.*.numbered", True, lambda s: next(q for q in s.queues if q.name == "protea.ping").numbered),
    ],
)
def test_a_changed_default_in_the_schema_is_what_a_stack_gets(
    monkeypatch: pytest.MonkeyPatch, key: str, value: Any, read: Any
) -> None:
    from protea_supervisor.stackfile import schema

    before = read(build())
    assert before != value
    monkeypatch.setitem(schema.DEFAULTS, key, value)
    assert read(build()) == value


def test_every_key_of_the_schema_says_what_it_means() -> None:
    from protea_supervisor.stackfile.keydocs import MEANING

    assert sorted(MEANING) == sorted(_schema_keys())


def test_autoscale_is_opt_in_per_queue_with_the_schemas_defaults() -> None:
    stack = build(host('[queues."protea.embeddings.batch".autoscale]\nmax = 6\n'))
    batch = next(q for q in stack.queues if q.name == "protea.embeddings.batch")
    assert batch.autoscale is not None
    assert (batch.autoscale.min, batch.autoscale.max, batch.autoscale.target_backlog) == (1, 6, 10)
    assert all(q.autoscale is None for q in stack.queues if q is not batch)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[queues."protea.embeddings".autoscale]',
            'queues."protea.embeddings".autoscale cannot scale a singleton queue (at most one consumer on any host)',
        ),
        (
            '[queues."protea.ping".autoscale]',
            'queues."protea.ping".autoscale needs numbered = true (its processes are <program>-1..N)',
        ),
        (
            '[queues."protea.embeddings.batch".autoscale]\nmin = 5\nmax = 2',
            'queues."protea.embeddings.batch".autoscale.min is 5, more than autoscale.max (2)',
        ),
        (
            '[queues."protea.embeddings.batch".autoscale]\nmax = 101',
            'queues."protea.embeddings.batch".autoscale.max must be 1 to 100 (the bound of processes), got 101',
        ),
    ],
)
def test_autoscale_refusals_name_the_file_and_the_key(text: str, message: str) -> None:
    assert refused(text) == f"/etc/protea/host.toml: {message}."


@pytest.mark.parametrize(
    ("document", "says"),
    [
        ('{"processes": {"worker-ping": -1}}', "processes must map program names to counts"),
        ('{"processes": {"worker-ping": true}}', "processes must map program names to counts"),
        ('{"numbered": "worker-ping"}', "numbered must list program names"),
        ('{"pinned": [1]}', "pinned must list program names"),
        ("[]", "expected a JSON object"),
        ("{", "cannot read the recorded process counts"),
    ],
)
def test_a_damaged_overrides_file_is_refused_in_one_sentence_naming_it(
    tmp_path: Path, document: str, says: str
) -> None:
    (tmp_path / "overrides.json").write_text(document)
    with pytest.raises(StackError, match=says) as refused:
        overrides.load(tmp_path)
    assert str(tmp_path / "overrides.json") in str(refused.value) and "remove the file" in str(refused.value)


def test_overrides_are_read_once_for_counts_numbering_and_pins(tmp_path: Path) -> None:
    overrides.save_counts(tmp_path, {"worker-ping": 3}, ["worker-ping"], ["worker-ping"])
    found = overrides.load(tmp_path)
    assert (found.counts, found.numbered, found.pinned) == (
        {"worker-ping": 3},
        {"worker-ping"},
        {"worker-ping"},
    )
    # What save_counts is not given stays as recorded.
    overrides.save_counts(tmp_path, {"worker-ping": 2})
    again = overrides.load(tmp_path)
    assert (again.counts, again.numbered, again.pinned) == (
        {"worker-ping": 2},
        {"worker-ping"},
        {"worker-ping"},
    )
    assert overrides.load(tmp_path / "nowhere") == overrides.Recorded({}, frozenset(), frozenset())
