"""Env files and required variables: named clearly, never echoing a value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from protea_supervisor.errors import EnvError
from protea_supervisor.stackfile.env import check_required, load_env_files, missing_variables

SECRET = "s3cr3t-Value-That-Must-Not-Leak"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_export_lines_are_accepted_and_later_files_win(tmp_path: Path) -> None:
    first = write(
        tmp_path / "protea.env", f"export PROTEA_DB_URL=postgresql://a\nexport PROTEA_JWT_SECRET='{SECRET}'\n"
    )
    second = write(tmp_path / ".env.local", "PROTEA_DB_URL=postgresql://b\n")
    values = load_env_files([first, second, tmp_path / "missing.env"])
    assert values == {"PROTEA_DB_URL": "postgresql://b", "PROTEA_JWT_SECRET": SECRET}


def test_values_are_literal_so_a_dollar_in_a_secret_survives(tmp_path: Path) -> None:
    env = write(tmp_path / "e.env", "PROTEA_JWT_SECRET='pa$$word${HOME}'\nPLAIN=a$HOME\n")
    assert load_env_files([env]) == {"PROTEA_JWT_SECRET": "pa$$word${HOME}", "PLAIN": "a$HOME"}


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_env_file_readable_by_group_or_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    env = write(tmp_path / "protea.env", f"PROTEA_JWT_SECRET={SECRET}\n", mode)
    with pytest.raises(EnvError) as caught:
        load_env_files([env])
    assert str(caught.value) == f"env file {env} is readable by group or others; run: chmod 600 {env}"


def test_missing_variables_are_named_with_the_files_searched() -> None:
    files = [Path("/home/op/.secrets/protea.env"), Path("/srv/.env.local")]
    with pytest.raises(EnvError) as caught:
        check_required({"PROTEA_DB_URL": "x"}, ["PROTEA_DB_URL", "PROTEA_AMQP_URL"], True, files)
    assert str(caught.value) == (
        "required variables PROTEA_AMQP_URL, PROTEA_JWT_SECRET not set in the environment or in "
        "/home/op/.secrets/protea.env, /srv/.env.local."
    )
    assert caught.value.exit_code == 78


def test_unprefixed_runbook_names_get_a_hint_without_their_values() -> None:
    env = {"PROTEA_DB_URL": "x", "PROTEA_AMQP_URL": "y", "JWT_SECRET": SECRET, "AUTHN_REQUIRED": "false"}
    with pytest.raises(EnvError) as caught:
        check_required(env, ["PROTEA_DB_URL", "PROTEA_AMQP_URL"], True, [])
    message = str(caught.value)
    assert "JWT_SECRET is set but PROTEA reads PROTEA_JWT_SECRET" in message
    assert "AUTHN_REQUIRED is set but PROTEA reads PROTEA_AUTHN_REQUIRED" in message
    assert SECRET not in message


@pytest.mark.parametrize(
    ("authn", "needs_jwt"),
    [(None, True), ("true", True), ("false", False), ("0", False), ("off", False), ("yes", True)],
)
def test_jwt_secret_required_unless_authn_is_off(authn: str | None, needs_jwt: bool) -> None:
    env = {} if authn is None else {"PROTEA_AUTHN_REQUIRED": authn}
    assert ("PROTEA_JWT_SECRET" in missing_variables(env, [], True)) is needs_jwt


def test_empty_value_counts_as_missing() -> None:
    assert missing_variables({"PROTEA_DB_URL": ""}, ["PROTEA_DB_URL"], False) == ["PROTEA_DB_URL"]


def test_a_line_that_is_not_key_value_is_refused_naming_the_file_and_line_but_not_the_text(
    tmp_path: Path,
) -> None:
    path = tmp_path / "protea.env"
    path.write_text("PROTEA_DB_URL=postgresql://u:p@h/db\nhunter2 is my password\nexport B=2\n")
    path.chmod(0o600)
    with pytest.raises(EnvError) as refused:
        load_env_files([path])
    message = str(refused.value)
    assert f"env file {path}: line 2 is not KEY=value" in message and "hunter2" not in message


def test_a_nul_byte_in_a_value_is_refused_as_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "protea.env"
    path.write_bytes(b"TOKEN=ab\x00cd\n")
    path.chmod(0o600)
    with pytest.raises(EnvError, match="TOKEN holds a NUL byte") as refused:
        load_env_files([path])
    assert refused.value.exit_code == 78 and "ab" not in str(refused.value).split("TOKEN")[1]
