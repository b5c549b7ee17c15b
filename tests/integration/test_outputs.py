"""Output a person reads, through the installed CLI: bare groups show their help, refusals are one line,
long lists are cut, times are human (ISO with --json), completion scripts work, and logs of removed
processes go once their retention is over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, Stack, ps, stack_file, wait_for

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("group", [[], ["gate"], ["lock"], ["tunnel"]])
def test_a_bare_group_prints_its_help_not_an_error(group: list[str]) -> None:
    result = ps(*group)
    assert result.code == 0 and result.err == "" and "Commands:" in result.out, result.both
    assert not result.out.lower().startswith("error")


def test_refusals_are_one_line_and_the_help_lists_every_exit_code(short_tmp: Path) -> None:
    stack = Stack(stack_file(short_tmp))
    trigger = stack.ps("trigger", "now")
    assert trigger.code == 1 and "no deploy timer (deploy.enabled is false" in trigger.err, trigger.both
    assert not (short_tmp / "run" / "deploy-trigger").exists()
    both = stack.ps("install-unit", "--user", "--system", "--print")
    assert both.code == 1 and "exclude each other" in both.err and both.out == ""
    for code in ("0 ok", "6 supervisord", "7 a program", "8 another", "9 backup", "78 env", "127 command"):
        assert code in " ".join(ps("--help").out.split()), code


def test_a_missing_log_names_a_few_and_counts_the_rest(short_tmp: Path) -> None:
    stack = Stack(stack_file(short_tmp))
    logs = short_tmp / "logs"
    logs.mkdir()
    for n in range(1, 501):
        (logs / f"worker-embeddings-batch-{n}.log").write_text("x\n")
    missing = stack.ps("logs", "nosuchprogram")
    assert missing.code == 1 and len(missing.err) < 300, missing.err
    assert "and 494 more" in missing.err


def test_completion_scripts_complete_the_commands() -> None:
    for shell in ("bash", "zsh", "fish"):
        script = ps("completion", shell)
        assert script.code == 0 and "_PROTEA_SUPERVISOR_COMPLETE" in script.out, shell
    env = dict(os.environ, _PROTEA_SUPERVISOR_COMPLETE="bash_complete", COMP_WORDS="protea-supervisor ga",
               COMP_CWORD="1")  # fmt: skip
    answer = subprocess.run([PS], env=env, capture_output=True, text=True, timeout=30)
    assert answer.returncode == 0 and "plain,gate" in answer.stdout.splitlines(), answer.stdout
    if subprocess.run(["bash", "-c", "true"]).returncode == 0:
        sourced = subprocess.run(
            ["bash", "-c", f'eval "$({PS} completion bash)" && complete -p protea-supervisor'],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert "_protea_supervisor_completion" in sourced.stdout, sourced.stderr


def test_gate_and_tunnel_status_read_as_times_and_a_probe_from_before_up_is_stale(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    stack = Stack(stack_file(short_tmp, queues={"protea.ping": {}}))
    supervisord(stack)
    assert stack.ps("up").code == 0
    gate = stack.ps("gate", "status")
    assert gate.code == 0 and gate.out.startswith("gate: done at ") and " ago)" in gate.out, gate.out
    doc = json.loads(stack.ps("gate", "status", "--json").out)
    assert doc["phase"] == "done" and doc["finished_at"].endswith("Z") and "T" in doc["finished_at"]
    wait_for(lambda: "last probe: ok" in stack.ps("tunnel", "status").out, 30, "a tunnel probe", interval=1)
    watch = json.loads(stack.ps("tunnel", "status", "--json").out)
    assert watch["last_probe_at"].endswith("Z")

    # The old probe survives a restart of the stack: until a new one, it is marked stale.
    assert stack.ps("down").code == 0
    supervisord(stack)
    assert stack.ps("up").code == 0
    # status first, the file after: a probe only moves forward, so a file still stale after the status was
    # read means the status saw the stale probe too.
    line = next(x for x in stack.ps("status").out.splitlines() if x.startswith("tunnel watch"))
    state = json.loads((short_tmp / "run" / "tunnel-watch.json").read_text())
    if state["last_probe_at"] < state["started_at"]:
        assert "[stale: from before the tunnel's current start]" in line, line

    def fresh() -> bool:
        out = stack.ps("tunnel", "status").out
        return "stale" not in out and "last probe: ok" in out

    wait_for(fresh, 30, "a fresh probe", interval=1)


def test_logs_of_scaled_away_workers_go_after_the_retention_and_no_other_file_does(short_tmp: Path) -> None:
    queue = {"protea.embeddings.batch": {"processes": 3, "numbered": True}}
    stack = Stack(stack_file(short_tmp, queues=queue, extra={"control": {"log_retention_days": 7}}))
    logs = short_tmp / "logs"
    logs.mkdir()
    old = time.time() - 10 * 86400
    for name in ("worker-embeddings-batch-1.log", "worker-embeddings-batch-2.log",
                 "worker-embeddings-batch-3.log", "worker-embeddings-batch-3.log.1", "someone-else.log"):  # fmt: skip
        (logs / name).write_text("x\n")
        os.utime(logs / name, (old, old))
    assert stack.ps("scale", "protea.embeddings.batch", "4").code == 0  # records what the stack runs
    down = stack.ps("scale", "protea.embeddings.batch", "1")
    assert down.code == 0, down.both
    assert "deleted the logs of 2 removed process(es)" in down.out, down.out
    assert sorted(p.name for p in logs.iterdir()) == ["someone-else.log", "worker-embeddings-batch-1.log"]
    # Within the retention a removed worker's log stays.
    assert stack.ps("scale", "protea.embeddings.batch", "2").code == 0
    (logs / "worker-embeddings-batch-2.log").write_text("fresh\n")
    assert stack.ps("scale", "protea.embeddings.batch", "1").code == 0
    assert (logs / "worker-embeddings-batch-2.log").exists()
