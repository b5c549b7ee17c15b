"""Env files and required variables.

Pure checks over mappings, plus `load_env_files` at the edge. Values are never put in messages: a message
names the variable and the files searched, nothing more.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from protea_supervisor.errors import EnvError

# The runbook's names are wrong: the code reads the PROTEA_-prefixed ones.
MISNAMED = {"JWT_SECRET": "PROTEA_JWT_SECRET", "AUTHN_REQUIRED": "PROTEA_AUTHN_REQUIRED"}
FALSE_WORDS = {"0", "false", "no", "off"}


def authn_required(env: Mapping[str, str]) -> bool:
    """PROTEA's rule: authentication is on unless PROTEA_AUTHN_REQUIRED says false."""
    return env.get("PROTEA_AUTHN_REQUIRED", "true").strip().lower() not in FALSE_WORDS


def missing_variables(env: Mapping[str, str], required: Sequence[str], require_jwt_secret: bool) -> list[str]:
    wanted = list(required)
    if require_jwt_secret and authn_required(env):
        wanted.append("PROTEA_JWT_SECRET")
    return [name for name in wanted if not env.get(name)]


def check_required(
    env: Mapping[str, str], required: Sequence[str], require_jwt_secret: bool, files: Sequence[Path]
) -> None:
    missing = missing_variables(env, required, require_jwt_secret)
    if not missing:
        return
    searched = ", ".join(str(f) for f in files) or "no env files"
    hints = [f"{wrong} is set but PROTEA reads {right}" for wrong, right in MISNAMED.items() if wrong in env]
    hint = f" ({'; '.join(hints)})" if hints else ""
    noun = "variable" if len(missing) == 1 else "variables"
    raise EnvError(f"required {noun} {', '.join(missing)} not set in the environment or in {searched}{hint}.")


def check_file_mode(path: Path, mode: int) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EnvError(f"env file {path} is readable by group or others; run: chmod 600 {path}")


def load_env_files(files: Sequence[Path]) -> dict[str, str]:
    """Read the env files that exist, in order (later wins). Missing files are skipped, as manage.sh did.

    Values are taken literally (no $VAR interpolation), so a secret containing `$` arrives intact.
    """
    values: dict[str, str] = {}
    for path in files:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode):
            raise EnvError(f"env file {path} is not a regular file.")
        check_file_mode(path, st.st_mode)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as why:
            raise EnvError(f"env file {path} cannot be read ({type(why).__name__}).") from None
        bad = [b.original.line for b in parse_stream(io.StringIO(text)) if b.error]
        if bad:
            # The line itself is never shown: it may hold a secret.
            lines = ", ".join(str(n) for n in bad[:5])
            raise EnvError(
                f"env file {path}: line {lines} is not KEY=value (nor a comment or `export KEY=value`)."
            )
        parsed = dotenv_values(stream=io.StringIO(text), interpolate=False)
        for key, value in parsed.items():
            if value is not None and ("\0" in value or "\0" in key):
                name = key.replace("\0", "")
                raise EnvError(f"env file {path}: {name} holds a NUL byte, which no program can receive.")
            if value is not None:
                values[key] = value
    return values


def merged_environment(base: Mapping[str, str], files: Sequence[Path]) -> dict[str, str]:
    env = dict(base)
    env.update(load_env_files(files))
    return env


def secret_values(files: Sequence[Path]) -> list[str]:
    """Every value in the env files, longest first: none of them may reach our output or logs."""
    try:
        values = load_env_files(files)
    except EnvError:
        return []
    return sorted({v for v in values.values() if len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: Sequence[str]) -> str:
    for value in secrets:
        text = text.replace(value, "***")
    return text


def after_double_dash(command: Sequence[str]) -> tuple[str, ...]:
    """A command line after our own arguments: click keeps a `--` that follows positional arguments; it only
    separates ours from the command's."""
    return tuple(command[1:]) if tuple(command[:1]) == ("--",) else tuple(command)
