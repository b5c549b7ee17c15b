"""What supervisord runs is exactly what the stack file says (issue 14), end to end: a command full of
config-line traps reaches its program argument for argument on a real supervisord, and every refusal is one
line naming the file and the key, with no traceback."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import Stack, ps, stack_file, toml_value, wait_for

pytestmark = pytest.mark.integration

# Each argument once broke a supervisord config line: an inline comment, a carriage return's cousins,
# quotes of both kinds, %, braces (written {{ }} in the stack file), unicode spaces before ';' and '#'.
TRAPS = ["p # comment", "one two #three ;four", "it's \"quoted\"", "100%", "%(here)s", "{braces}",
         "a\u00a0;b", "x\u2003#y", "tab\t#z", "$HOME", "back\\slash", "", "  padded  ", "🦀"]  # fmt: skip
ARGV_DUMP = "import json,sys; open(sys.argv[1],'w').write(json.dumps(sys.argv[2:]))"


def test_a_command_full_of_traps_reaches_the_program_argument_for_argument(
    short_tmp: Path, supervisord: Callable[[Stack], None]
) -> None:
    import shlex

    seen = short_tmp / "argv.json"
    command = (
        shlex.join([sys.executable, "-c", ARGV_DUMP, str(seen), *TRAPS]).replace("{", "{{").replace("}", "}}")
    )
    # A one-shot that records its argv, in place of the migration.
    stack = Stack(stack_file(short_tmp, extra={"programs": {"migrate": {"command": command}}}))
    check = stack.ps("render", "--check")
    assert check.code == 0, check.both
    supervisord(stack)
    assert stack.ps("up").code == 0
    wait_for(seen.exists, 20, "the migration stand-in to record its argv")
    assert json.loads(seen.read_text()) == TRAPS


@pytest.mark.parametrize(
    ("extra", "key", "why"),
    [
        ({"paths": {"logs": "{root}/l ;x"}}, "paths.logs", "whitespace before ';' or '#'"),
        (
            {"programs": {"api": {"command": "p '\r[program:injected]'"}}},
            "programs.api.command",
            "line break",
        ),
        ({"programs": {"api": {"directory": "{root} "}}}, "programs.api.directory", "whitespace"),
        ({"queues": {"protea.jobs": {"program": "gate"}}}, 'queues."protea.jobs".program', "'gate'"),
        ({"programs": {"api": {"command": "{root.__class__}"}}}, "programs.api.command", "bare name"),
        ({"env": {"files": ["x\ny.env"]}}, "env.files[0]", "line break"),
        ({"lock": {"flock_timeout": float("nan")}}, "lock.flock_timeout", "finite"),
        ({"queues": {"protea.jobs": {"processes": 10**9}}}, 'queues."protea.jobs".processes', "0 to 100"),
    ],
)
def test_render_check_refuses_in_one_line_naming_file_and_key(
    short_tmp: Path, extra: dict[str, object], key: str, why: str
) -> None:
    stack = Stack(stack_file(short_tmp, extra=extra))
    result = stack.ps("render", "--check")
    assert result.code == 1, result.both
    assert result.err.startswith(f"error: {stack.file}: {key}") and why in result.err, result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.both


def test_exec_refuses_a_nul_in_an_env_value_and_a_file_it_cannot_execute(tmp_path: Path) -> None:
    env_file = tmp_path / "protea.env"
    env_file.write_bytes(b"TOKEN=a\x00b\n")
    env_file.chmod(0o600)
    nul = ps("exec", "--env-file", str(env_file), "--", "true")
    assert nul.code == 78 and "NUL" in nul.err and len(nul.err.splitlines()) == 1, nul.both
    script = tmp_path / "no-shebang"
    script.write_text("echo hi\n")
    script.chmod(0o755)
    noexec = ps("exec", "--", str(script))
    assert noexec.code == 127 and "cannot execute" in noexec.err, noexec.both


def test_a_generated_toml_value_is_shown_escaped_in_one_line(short_tmp: Path) -> None:
    # A key with a line break in it: the message quotes it TOML-style and stays one line.
    path = stack_file(short_tmp)
    bad = toml_value("bad\nname")
    path.write_text(path.read_text() + f"\n[queues.{bad}]\nprocesses = 1\n")
    result = ps("--stack", str(path), "render", "--check")
    assert result.code == 1 and len(result.err.strip().splitlines()) == 1, result.both
    assert 'queues."bad\\nname"' in result.err
