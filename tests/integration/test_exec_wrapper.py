"""The exec wrapper: env files reach the program byte for byte, under the same pid."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent.parent))
from conftest import PS, ps

DUMP = (
    "import os,sys; open(sys.argv[1],'wb').write(os.environb[b'PLANTED'] + b'|' + str(os.getpid()).encode())"
)


def dotenv_single_quoted(value: str) -> str:
    """How an operator writes any value into an env file: single quotes, with \\\\ and \\' escaped."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# Anything an env var can hold but NUL; lone surrogates are not text, and a file read with universal
# newlines turns a carriage return into a newline (README: "Env files").
VALUES = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\r"), max_size=40
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES, export=st.booleans())
def test_any_value_reaches_the_program_byte_for_byte(tmp_path: Path, value: str, export: bool) -> None:
    env_file = tmp_path / "protea.env"
    env_file.write_text(
        f"{'export ' if export else ''}PLANTED={dotenv_single_quoted(value)}\n", encoding="utf-8"
    )
    env_file.chmod(0o600)
    out = tmp_path / "seen"
    proc = subprocess.Popen(
        [PS, "exec", "--env-file", str(env_file), "--", sys.executable, "-c", DUMP, str(out)],
        stderr=subprocess.PIPE,
    )
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    seen, pid = out.read_bytes().rsplit(b"|", 1)
    assert seen == value.encode("utf-8")
    assert int(pid) == proc.pid  # exec, not a child: supervisord tracks the real program


def test_later_file_wins_and_file_wins_over_inherited_environment(tmp_path: Path) -> None:
    first, second = tmp_path / "a.env", tmp_path / "b.env"
    first.write_text("PLANTED=first\n")
    second.write_text("export PLANTED=second\n")
    for f in (first, second):
        f.chmod(0o600)
    out = tmp_path / "seen"
    result = subprocess.run(
        [
            PS,
            "exec",
            "--env-file",
            str(first),
            "--env-file",
            str(second),
            "--",
            sys.executable,
            "-c",
            DUMP,
            str(out),
        ],
        env={**os.environ, "PLANTED": "inherited"},
        check=False,
    )
    assert result.returncode == 0
    assert out.read_bytes().startswith(b"second|")


def test_missing_command_and_missing_variable_exit_codes(tmp_path: Path) -> None:
    missing = ps("exec", "--", "/nonexistent/binary")
    assert missing.code == 127 and missing.err == "error: command not found: /nonexistent/binary.\n"
    required = ps("exec", "--require", "PROTEA_AMQP_URL", "--", "true", env={"PROTEA_AMQP_URL": ""})
    assert required.code == 78 and "PROTEA_AMQP_URL" in required.err
    jwt = ps("exec", "--require-jwt-secret", "--", "true", env={"PROTEA_AUTHN_REQUIRED": "false"})
    assert jwt.code == 0


def test_a_refused_start_leaves_its_reason_and_the_next_start_that_passes_clears_it(tmp_path: Path) -> None:
    """With --refusals (a worker whose refusals are final), a missing variable is recorded for `status`
    under the process's name; a start that passes every check removes the record."""
    refusals = tmp_path / "refused"
    names = {"SUPERVISOR_GROUP_NAME": "worker-jobs", "SUPERVISOR_PROCESS_NAME": "worker-jobs"}
    args = ("exec", "--refusals", str(refusals), "--require", "PROTEA_AMQP_URL", "--", "true")
    refused = ps(*args, env={**names, "PROTEA_AMQP_URL": ""})
    assert refused.code == 78 and "PROTEA_AMQP_URL" in refused.err
    record = refusals / "worker-jobs:worker-jobs"
    assert "PROTEA_AMQP_URL" in record.read_text()
    started = ps(*args, env={**names, "PROTEA_AMQP_URL": "amqp://x"})
    assert started.code == 0 and not record.exists()
