"""Rendering: the golden PROTEA config, supervisord's own parser, and escaping that round-trips."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from supervisor.datatypes import RestartUnconditionally, RestartWhenExitUnexpected, dict_of_key_value_pairs
from supervisor.events import EventTypes
from supervisor.options import ServerOptions

from protea_supervisor.errors import RenderError
from protea_supervisor.stackfile.files import builtin_stack_text, parse_toml
from protea_supervisor.stackfile.parser import parse_stack
from protea_supervisor.stackfile.stack import HostFacts, Stack
from protea_supervisor.supervisord.readback import parse as check_config
from protea_supervisor.supervisord.render import envpairs, pct, render

GOLDEN = Path(__file__).parent / "golden" / "protea.conf"
HOST = HostFacts(home=Path("/home/op"), python="/opt/venv/bin/python")
EXE = ["/opt/protea-supervisor/bin/protea-supervisor"]


def stack(extra: str = "") -> Stack:
    layers: list[tuple[str, Any]] = [("built-in protea stack", parse_toml(builtin_stack_text("protea"), "d"))]
    if extra:
        layers.append(("host.toml", parse_toml(extra, "host.toml")))
    return parse_stack(layers, HOST)


def test_default_protea_stack_matches_golden_file() -> None:
    text = render(stack(), EXE)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), (
        "rendered config changed; rerun with UPDATE_GOLDEN=1 and review the diff"
    )


def rooted(root: Path, extra: str = "") -> Stack:
    """The default stack moved under `root` (extra must not have [paths]), with the dirs supervisord checks."""
    (root / "logs").mkdir(parents=True)
    (root / "run").mkdir()
    return stack(f"[paths]\nroot = '{root}'\nrun = '{root}/run'\n{extra}")


def loaded(text: str) -> Any:
    """The parsed [supervisord] section, as supervisord itself would build it."""
    return ServerOptions().read_config(io.StringIO(text))


def test_rendered_default_loads_in_supervisord_with_manage_sh_process_and_log_names(tmp_path: Path) -> None:
    text = render(rooted(tmp_path), EXE)
    check_config(text)
    options = loaded(text)
    processes = {
        p.name: p
        for g in options.process_group_configs
        for p in g.process_configs
        if p.name not in ("gate", "tunnel-watch", "deploy-timer", "metrics")
    }
    assert "worker-ping" in processes
    assert "worker-embeddings-batch-1" in processes
    assert (
        processes["worker-embeddings-batch-1"].stdout_logfile
        == f"{tmp_path}/logs/worker-embeddings-batch-1.log"
    )
    assert processes["worker-ping"].stdout_logfile == f"{tmp_path}/logs/worker-ping.log"
    for config in processes.values():
        assert config.stopasgroup and config.killasgroup
        assert config.redirect_stderr
    assert processes["migrate"].startsecs == 0
    assert processes["migrate"].autorestart is False
    assert processes["tunnel"].autorestart is False  # the tunnel watchdog alone restarts it
    assert processes["api"].autorestart is RestartUnconditionally
    # The deploy tick is a one-shot only the deploy timer (or an operator) starts.
    tick = processes["deploy-tick"]
    assert tick.startsecs == 0 and tick.autorestart is False and tick.exitcodes == [0, 10]
    (timer,) = [g for g in options.process_group_configs if g.name == "deploy-timer"]
    assert timer.buffer_size >= 256 and EventTypes.TICK_5 in timer.pool_events
    assert processes["worker-ping"].stopwaitsecs == 300
    assert processes["worker-ping"].exitcodes == [0, 143]
    assert not any(config.autostart for config in processes.values())  # the gate starts them
    (gate,) = [g for g in options.process_group_configs if g.name == "gate"]
    assert gate.buffer_size >= 256 and gate.process_configs[0].autostart
    assert set(gate.pool_events) == {
        EventTypes.PROCESS_STATE,
        EventTypes.REMOTE_COMMUNICATION,
        EventTypes.TICK_5,
    }
    servers = options.server_configs
    assert [s["family"] for s in servers] == [1]  # AF_UNIX only: no inet server unless asked for
    assert servers[0]["chmod"] == 0o700


def test_batch_queue_renders_numprocs_and_numbered_names(tmp_path: Path) -> None:
    text = render(rooted(tmp_path, '[queues."protea.predictions.batch"]\nprocesses = 3\n'), EXE)
    names = [p.name for g in loaded(text).process_group_configs for p in g.process_configs]
    assert [n for n in names if "predictions-batch" in n] == [
        "worker-predictions-batch-1", "worker-predictions-batch-2", "worker-predictions-batch-3",
    ]  # fmt: skip


def test_inet_server_needs_user_and_sha_and_binds_where_told(tmp_path: Path) -> None:
    sha = "{SHA}" + "a" * 40
    text = render(
        rooted(tmp_path, f"[control]\ninet_port = 19001\nusername = 'ops'\npassword_sha = '{sha}'\n"), EXE
    )
    inet = [s for s in loaded(text).server_configs if s["family"] != 1]
    assert inet[0]["host"] == "127.0.0.1" and inet[0]["port"] == 19001
    assert inet[0]["username"] == "ops" and inet[0]["password"] == sha


def test_percent_in_command_and_paths_reaches_supervisord_literally(tmp_path: Path) -> None:
    root = tmp_path / "100%done"
    text = render(rooted(root, "[programs.api]\ncommand = 'uvicorn --fmt %(x)s 50%'\n"), EXE)
    processes = {p.name: p for g in loaded(text).process_group_configs for p in g.process_configs}
    assert processes["api"].command.endswith("-- uvicorn --fmt '%(x)s' 50%")
    assert processes["api"].directory == str(root)
    assert processes["api"].stdout_logfile == f"{root}/logs/api.log"
    assert loaded(text).logfile == f"{root}/run/supervisord.log"


def test_programs_start_through_the_exec_wrapper_with_env_files_not_values() -> None:
    text = render(stack(), EXE)
    assert "exec --env-file /home/op/.secrets/protea.env --env-file " in text
    assert "--require PROTEA_DB_URL --require PROTEA_AMQP_URL --require-jwt-secret" in text


def test_web_falls_back_to_next_start_through_the_wrapper() -> None:
    text = render(stack(), EXE)
    assert (
        "--requires-file .next/standalone/server.js --fallback 'npm run start' -- node .next/standalone/server.js"
        in text
    )


def test_check_config_refuses_what_supervisord_refuses(tmp_path: Path) -> None:
    with pytest.raises(RenderError, match=r"supervisord would refuse the rendered config: .*does not exist"):
        check_config(render(stack(f"[paths]\nroot = '{tmp_path}/missing'\n"), EXE))


SAFE_VALUE = st.text(
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=0, max_size=30
).filter(
    lambda v: (
        not (("'" in v and '"' in v) or v[:1] in "'\"" or v[-1:] in "'\"")
        # Any whitespace (a no-break space too) before ';' or '#' is a comment to supervisord: refused.
        and not re.search(r"\s[;#]", v)
        and "\t" not in v
        and v == v.strip()
    )
)


@given(st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,10}", fullmatch=True), SAFE_VALUE, max_size=4))
def test_envpairs_round_trips_through_supervisors_parser(env: dict[str, str]) -> None:
    rendered = envpairs(sorted(env.items()))
    parsed = dict_of_key_value_pairs(rendered.replace("%%", "%")) if env else {}
    assert parsed == env


@pytest.mark.parametrize("value", ['it\'s "x"', "'quoted'", "a ;b", 'tail"'])
def test_envpairs_refuses_values_supervisord_would_mangle(value: str) -> None:
    with pytest.raises(RenderError, match="env file"):
        envpairs([("K", value)])


def test_pct_doubles_percent() -> None:
    assert pct("100%") == "100%%"


def test_web_serving_a_build_is_stamped_with_the_build_and_the_rest_with_the_revision(tmp_path: Path) -> None:
    """A deploy restarts what its config changed: web serving `deploy.web_current` changes only with the
    build, so a revision that did not rebuild the frontend leaves it running."""

    def environments(extra: str, revision: str, build: str) -> dict[str, dict[str, str]]:
        (tmp_path / "logs").mkdir(exist_ok=True)
        paths = f"[paths]\nroot = '{tmp_path}'\nrun = '{tmp_path}'\n"
        text = render(stack(paths + extra), EXE, revision, build)
        groups = {g.name: g for g in loaded(text).process_group_configs}
        return {name: groups[name].process_configs[0].environment or {} for name in ("api", "web", "tunnel")}

    built = "[programs.web]\ndirectory = '{run}/web-current'\n"
    one = environments(built, "a" * 40, f"{tmp_path}/web-builds/aaaa-1")
    two = environments(built, "b" * 40, f"{tmp_path}/web-builds/aaaa-1")
    assert one["web"] == two["web"] and one["web"]["PROTEA_WEB_BUILD"] == "aaaa-1"
    assert "PROTEA_REVISION" not in one["web"] and one["api"]["PROTEA_REVISION"] == "a" * 40
    assert environments(built, "b" * 40, f"{tmp_path}/web-builds/bbbb-2")["web"] != two["web"]
    assert "PROTEA_REVISION" not in one["tunnel"] and "PROTEA_WEB_BUILD" not in one["tunnel"]
    # Web run from the worktree runs the checked-out code: the revision stamps it.
    assert environments("", "a" * 40, "")["web"]["PROTEA_REVISION"] == "a" * 40


def test_an_api_with_a_socket_is_an_fcgi_program_whose_socket_supervisord_holds(tmp_path: Path) -> None:
    extra = "[programs.api]\ncommand = 'uvicorn protea.api:app --fd 0'\nsocket = 'tcp://127.0.0.1:8000'\n"
    text = render(rooted(tmp_path, extra), EXE)
    check_config(text)
    assert "[fcgi-program:api]" in text and "[program:api]" not in text
    groups = {g.name: g for g in loaded(text).process_group_configs}
    api = groups["api"]
    assert type(api).__name__ == "FastCGIGroupConfig"
    assert str(api.socket_config) == "tcp://127.0.0.1:8000"
    assert [pc.name for pc in api.process_configs] == ["api"]  # the same process name as a plain program
    assert type(groups["web"]).__name__ == "ProcessGroupConfig"


def test_a_node_renders_guarded_workers_whose_refusal_is_final(tmp_path: Path) -> None:
    off = "".join(f"[programs.{role}]\nenabled = false\n" for role in ("migrate", "api", "web", "tunnel"))
    node = rooted(tmp_path, f'[host]\nrole = "node"\nrevision_guard = true\ndb_url_env = "NODE_DB"\n{off}')
    text = render(node, EXE)
    check_config(text)
    processes = {p.name: p for g in loaded(text).process_group_configs for p in g.process_configs}
    assert not {"migrate", "api", "web", "tunnel"} & set(processes)
    worker = processes["worker-ping"]
    # Exit 78 (refused) is the only expected exit, and only unexpected exits restart: a refusal stays down.
    assert worker.exitcodes == [78] and worker.autorestart is RestartWhenExitUnexpected
    guard = ["--revision-guard", "--declared-from", "NODE_DB", "--refusals", f"{tmp_path}/run/refused"]
    assert worker.command.split()[2:7] == guard, worker.command
    # The server's guard does not read the declaration: it writes it.
    server = render(stack(f"[paths]\nroot = '{tmp_path}'\n[host]\nrevision_guard = true\n"), EXE)
    assert "--revision-guard" in server and "--declared-from" not in server
    assert "--revision-guard" not in render(stack(), EXE)


def test_a_singleton_queue_holds_its_lock_through_the_wrapper_and_its_refusal_is_final(
    tmp_path: Path,
) -> None:
    text = render(
        rooted(tmp_path, '[host]\nname = "gpu-1"\n[queues."protea.embeddings"]\nsingleton = true\n'), EXE
    )
    check_config(text)
    processes = {p.name: p for g in loaded(text).process_group_configs for p in g.process_configs}
    single = processes["worker-embeddings-coord"]
    # It waits for the broker to count no other consumer for the queue's stop grace and 10 s more.
    grace = stack().queue("protea.embeddings").stop_grace
    assert single.command.split()[2:14] == [
        "--singleton", "protea.embeddings", "--singleton-db", "PROTEA_DB_URL", "--singleton-broker",
        "PROTEA_AMQP_URL", "--singleton-wait", str(grace + 10), "--host-name", "gpu-1",
        "--refusals", f"{tmp_path}/run/refused",
    ]  # fmt: skip
    assert single.exitcodes == [78] and single.autorestart is RestartWhenExitUnexpected
    assert processes["worker-ping"].exitcodes == [0, 143]  # the others as before
