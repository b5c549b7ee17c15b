"""Generated stack files: every one is refused in one line naming its file and key, or what supervisord reads
back from the written config is exactly what the stack asked for. supervisord's own parser is the judge.

The inputs are the shipped defaults, the demo and `deploy/protea-host.example.toml`, mutated in types, keys,
numbers, unicode, lengths, separators and placeholders. `--hypothesis-long` runs tens of thousands.
"""

from __future__ import annotations

import math
import re
import shlex
import signal
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protea_supervisor.errors import StackError
from protea_supervisor.stackfile.files import builtin_stack_text, parse_toml
from protea_supervisor.stackfile.parser import parse_stack
from protea_supervisor.stackfile.stack import HostFacts, Stack
from protea_supervisor.supervisord.readback import parse, verify
from protea_supervisor.supervisord.render import blocks, render

EXE = ["/opt/ps/bin/protea-supervisor"]
HOST = HostFacts(home=Path("/home/op"), python="/opt/venv/bin/python")
HOST_FILE = "/etc/protea/host.toml"
DEFAULTS = ("built-in protea stack", parse_toml(builtin_stack_text("protea"), "defaults"))
BASES = {
    "demo": parse_toml(builtin_stack_text("demo"), "demo"),
    "example": tomllib.loads((Path(__file__).parents[2] / "deploy" / "protea-host.example.toml").read_text()),
    "empty": {},
}

# Characters that broke things before: comment starters after (unicode) spaces, line breaks, quotes, %,
# braces, NUL, long runs.
NASTY = st.sampled_from(
    [" ;", " #", "\t;", "\u00a0;", "\u2003#", "\r", "\n", "\r\n", "\x00", "'", '"', "%", "%(here)s", "{", "}",
     "{{", "}}", "{root}", "{root.x}", "{root[0]}", "{python!r}", "{home:>9}", "{stack_dir}", "{queue}",
     "\\", "$HOME", ",", "=", ":", " ", "\u2028", "\x85", "é", "🦀", "a" * 300, "/", "..", "~", "-"]
)  # fmt: skip
TEXT = st.one_of(
    st.text(max_size=12),
    st.lists(st.one_of(NASTY, st.text(max_size=4)), max_size=6).map("".join),
)
SCALAR = st.one_of(
    TEXT,
    st.integers(min_value=-(10**20), max_value=10**20),
    st.sampled_from([0, 1, -1, 5, 100, 101, 65535, 65536, 86400, 10**9]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.one_of(TEXT, st.integers(-5, 700)), max_size=3),
)


def keys_of(data: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.append((*prefix, key))
            found += keys_of(value, (*prefix, key))
    return found


# Keys worth mutating even when the base does not set them.
KNOWN = [
    ("programs", "api", "command"), ("programs", "api", "directory"), ("programs", "web", "environment", "PORT"),
    ("programs", "migrate", "stop_grace"), ("paths", "logs"), ("paths", "run"), ("workers", "command"),
    ("queues", "protea.ping", "processes"), ("queues", "protea.ping", "program"), ("queues", "x.y", "command"),
    ("env", "files"), ("control", "inet_host"), ("control", "inet_port"), ("lock", "flock_timeout"),
    ("tunnel_watch", "confirm_interval"), ("backup", "min_free_gb"), ("deploy", "retry_ladder"),
    ("metrics", "host"), ("name",), ("probes", "api_ready_url"), ("programs", "api", "socket"),
    ("host", "role"), ("host", "name"), ("host", "stale_after"), ("host", "db_url_env"), ("host", "heartbeat"),
    ("queues", "protea.embeddings", "singleton"), ("queues", "protea.jobs", "singleton"), ("workers", "restart_delay"),
]  # fmt: skip


# Arguments with every character a config line can carry (no line break, no NUL), weighted to the traps.
ARG = st.lists(
    st.one_of(st.sampled_from([" ;", " #", "\u00a0;", "'", '"', "%", "%(here)s", "{", "}", "\\", "$HOME", " ",
                               "\u2028", "\x85", "\t#", "é", "🦀", ";", "#", "=", ","]),
              st.text(alphabet=st.characters(blacklist_characters="\r\n\x00", blacklist_categories=("Cs",)), max_size=4)),
    max_size=5,
).map("".join)  # fmt: skip
PATH_PART = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters=" %'\"-_.,;#="),
                    min_size=1, max_size=12).filter(lambda p: p.strip() == p and p not in (".", ".."))  # fmt: skip


def braces(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


@st.composite
def carriable_layer(draw: st.DrawFn) -> dict[str, Any]:
    """The demo with commands, environment values and paths full of what supervisord's config mangles
    unless it is carried right: these should be accepted (or refused for a documented reason)."""
    data: dict[str, Any] = tomllib.loads(tomllib_dump(BASES["demo"]))
    program = draw(st.sampled_from(["api", "web", "tunnel", "migrate"]))
    argv = [draw(st.sampled_from(["/bin/x", "{python}", "node"])), *draw(st.lists(ARG, max_size=5))]
    data["programs"][program]["command"] = (
        braces(shlex.join(argv[:1]) + " " + shlex.join(argv[1:])) if argv[1:] else argv[0]
    )
    data["workers"]["command"] = (
        braces(shlex.join(["w", *draw(st.lists(ARG, max_size=3))])) + " --queue {queue}"
    )
    data["programs"]["web"].setdefault("environment", {})["X_VALUE"] = braces(draw(ARG))
    if draw(st.booleans()):
        data["paths"]["logs"] = "{root}/" + braces(draw(PATH_PART))
    return data


@st.composite
def stack_layer(draw: st.DrawFn) -> dict[str, Any]:
    if draw(st.integers(0, 2)) == 0:
        return draw(carriable_layer())
    base = draw(st.sampled_from(sorted(BASES)))
    data: dict[str, Any] = tomllib.loads(tomllib_dump(BASES[base]))
    for _ in range(draw(st.integers(1, 3))):
        candidates = keys_of(data) + KNOWN
        path = draw(st.sampled_from(candidates))
        action = draw(st.sampled_from(["set", "set", "set", "delete", "placeholder"]))
        node = data
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
        if action == "delete":
            node.pop(path[-1], None)
        elif action == "placeholder" and isinstance(node.get(path[-1]), str):
            node[path[-1]] = node[path[-1]] + draw(NASTY)
        else:
            node[path[-1]] = draw(SCALAR)
    return data


def tomllib_dump(data: Any) -> str:
    """Just enough TOML to deep-copy the bases through the real parser."""
    import json

    return "\n".join(_dump(json.loads(json.dumps(data)), ()))


def _dump(table: dict[str, Any], prefix: tuple[str, ...]) -> list[str]:
    lines = []
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    if prefix:
        lines.append("[" + ".".join(_key(p) for p in prefix) + "]")
    lines += [f"{_key(k)} = {_value(v)}" for k, v in scalars.items()]
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _dump(value, (*prefix, key))
    return lines


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def judged_by_supervisord(stack: Stack) -> None:
    """What supervisord parses from the written file is what the stack says: argv, directory, environment,
    stop signal and grace, process names."""
    text = render(stack, EXE, "abc123")
    options = parse(text, [stack.paths.logs, stack.paths.run])
    groups = {g.name: g for g in options.configroot.supervisord.process_group_configs}
    for program in stack.programs:
        if not program.enabled:
            assert program.role not in groups
            continue
        (config,) = groups[program.role].process_configs
        argv = shlex.split(config.command)
        assert argv[argv.index("--") + 1 :] == shlex.split(program.command), program.role
        assert config.directory == str(program.directory)
        environment = dict(program.environment)
        if program.role != "tunnel":
            environment["PROTEA_REVISION"] = "abc123"
        assert dict(config.environment or {}) == environment
        assert config.stopsignal == getattr(signal, f"SIG{program.stop_signal}")
        assert config.stopwaitsecs == program.stop_grace
    for queue in stack.queues:
        if not queue.processes:
            assert queue.program not in groups
            continue
        configs = groups[queue.program].process_configs
        assert sorted(c.name for c in configs) == sorted(queue.process_names())
        for config in configs:
            argv = shlex.split(config.command)
            assert argv[argv.index("--") + 1 :] == shlex.split(queue.command)
            assert config.stdout_logfile == f"{stack.paths.logs}/{config.name}.log"
    section = options.configroot.supervisord
    assert section.pidfile == str(stack.pidfile) and section.childlogdir == str(stack.paths.logs)
    expected = {p.role for p in stack.programs if p.enabled} | {
        q.program for q in stack.queues if q.processes
    }
    assert expected <= set(groups) and len(groups) == len(expected) + 1 + len(blocks(stack, EXE)[1])


def check(layer: dict[str, Any]) -> None:
    try:
        stack = parse_stack([DEFAULTS, (HOST_FILE, layer)], HOST)
    except StackError as refused:
        message = str(refused)
        assert "\n" not in message and "\r" not in message, message
        assert message.startswith((f"{HOST_FILE}: ", "built-in protea stack: ")), message
        assert len(message) < 600, message
        return
    judged_by_supervisord(stack)
    programs, listeners = blocks(stack, EXE, "abc123")
    verify(stack, render(stack, EXE, "abc123"), programs, listeners, [stack.paths.logs, stack.paths.run])


@pytest.fixture(scope="module")
def examples(request: pytest.FixtureRequest) -> int:
    return 20000 if request.config.getoption("--hypothesis-long") else 300


@pytest.mark.slow
def test_generated_stack_files_are_refused_in_one_line_or_read_back_exactly(examples: int) -> None:
    @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(stack_layer())
    def run(layer: dict[str, Any]) -> None:
        check(layer)

    run()


@pytest.mark.parametrize(
    ("layer", "fragment"),
    [
        ({"programs": {"api": {"command": "p # comment"}}}, None),  # accepted: argv is p, #, comment
        ({"programs": {"api": {"command": "sh -c 'one two' #three ;four"}}}, None),
        ({"paths": {"run": "/srv/a ;b"}}, "paths.run has whitespace before ';' or '#'"),
        ({"paths": {"logs": "/srv/l\u2003#x"}}, "paths.logs has whitespace before ';' or '#'"),
        ({"programs": {"api": {"command": "p '\r[program:injected]\rcommand=x'"}}}, "programs.api.command holds a line break"),
        ({"env": {"files": ["x\ny.env"]}}, "env.files[0] holds a line break"),
        ({"programs": {"web": {"environment": {"A": "x\ry"}}}}, "programs.web.environment.A holds a line break"),
        ({"queues": {"gate": {"program": "gate"}}}, "queues.gate.program makes program 'gate'"),
        ({"queues": {"x": {"program": "deploy-tick", "numbered": True, "processes": 2}}}, "queues.x.program makes program 'deploy-tick'"),
        ({"queues": {"metrics": {"program": "metrics"}}}, "metrics"),
        ({"paths": {"root": "{root.x}"}}, "no attribute, index, conversion or format"),
        ({"paths": {"venv": "{root[x]}"}}, "no attribute, index, conversion or format"),
        ({"programs": {"api": {"command": "{python.upper}"}}}, "no attribute, index, conversion or format"),
        ({"programs": {"api": {"command": "{root.__class__}"}}}, "no attribute, index, conversion or format"),
        ({"programs": {"api": {"command": "{root!r}"}}}, "no attribute, index, conversion or format"),
        ({"programs": {"api": {"command": "{nope\nx}"}}}, "unknown placeholder {nope\\nx}"),
        ({"paths": {"logs": "/srv/" + "x" * 256}}, "longer than 255 bytes"),
        ({"programs": {"web": {"environment": {"A": "a\x00b"}}}}, "NUL"),
        ({"queues": {"protea.ping": {"processes": 10**9}}}, "must be 0 to 100"),
        ({"backup": {"min_free_gb": -1}}, "backup.min_free_gb must be 0 to"),
        ({"tunnel_watch": {"confirm_interval": math.inf}}, "must be a finite number"),
        ({"lock": {"flock_timeout": math.nan}}, "must be a finite number"),
        ({"control": {"inet_port": 9001, "inet_host": "", "username": "u", "password_sha": "{SHA}" + "0" * 40}}, "binds all"),
        ({"programs": {"api": {"directory": "{root} "}}}, "starts or ends with whitespace"),
        ({"queues": {"protea.ping": {"procesess": 1}}}, 'unknown key queues."protea.ping".procesess'),
    ],
)  # fmt: skip
def test_each_observed_trap_is_refused_or_carried_exactly(
    layer: dict[str, Any], fragment: str | None
) -> None:
    if fragment is None:
        stack = parse_stack([DEFAULTS, (HOST_FILE, layer)], HOST)
        judged_by_supervisord(stack)
        return
    with pytest.raises(StackError) as refused:
        parse_stack([DEFAULTS, (HOST_FILE, layer)], HOST)
    message = str(refused.value)
    assert fragment in message and "\n" not in message and message.startswith(HOST_FILE), message


def test_a_queue_of_ten_or_more_processes_reads_back_whatever_order_supervisord_keeps() -> None:
    # Found by the long run: supervisord sorts worker-x-10 before worker-x-2.
    check({"queues": {"protea.predictions.batch": {"processes": 12}}})


@pytest.mark.parametrize(
    "layer",
    [
        {"queues": {"protea.ping": {"program": "worker-ping\n"}}},
        {"name": "protea\n"},
        {"env": {"required": ["PROTEA_DB_URL\n"]}},
        {"backup": {"check_tables": ["items\n"]}},
    ],
)
def test_a_trailing_newline_never_slips_past_a_name_check(layer: dict[str, Any]) -> None:
    # Found by the long run: `^...$` with re.match accepts "name\n".
    with pytest.raises(StackError) as refused:
        parse_stack([DEFAULTS, (HOST_FILE, layer)], HOST)
    assert "\n" not in str(refused.value)


def test_a_url_with_a_bracketed_host_that_is_no_address_is_refused() -> None:
    # Found by the long run: urlsplit itself raises on "http://h:1{root[0]}".
    with pytest.raises(StackError, match=r"probes\.web_url must be an http"):
        parse_stack([DEFAULTS, (HOST_FILE, {"probes": {"web_url": "http://127.0.0.1:13000{root[0]}"}})], HOST)
