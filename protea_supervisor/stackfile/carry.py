"""What a supervisord config line can carry, and how command lines are written so it carries them exactly.

supervisord reads its config with configparser (inline comments start at `;` or `#` after whitespace, values
are stripped, the file is read in text mode so `\\r` ends a line) and then splits `command=` with POSIX
shlex. So:

- a command is written argument by argument, each quoted for shlex, with every `;` and `#` (and `'`) escaped
  by a backslash outside the quotes: no `;` or `#` ever follows whitespace, and shlex gives back the exact
  arguments. Only a line break or a NUL cannot be carried in an argument;
- a value written as is (a path: `directory=`, log files, the socket) cannot hold a line break, a NUL,
  whitespace before `;` or `#`, or whitespace at either end;
- an `environment=` value (non-POSIX shlex with no escapes) cannot hold both quote kinds, a quote at either
  end, whitespace before `;` or `#`, a line break or a NUL.

Each check returns the reason in words, or "" when the value is carried exactly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")
_BEFORE_COMMENT = re.compile(r"\s[;#]")
# A path component longer than this is refused by the kernel (ENAMETOOLONG) when anything opens it.
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4095


def config_quote(arg: str) -> str:
    """One argument for a supervisord `command=` line (before `%` escaping)."""
    if _PLAIN.fullmatch(arg):
        return arg
    out: list[str] = []
    run: list[str] = []
    for char in arg:
        if char in "';#":
            if run:
                out.append("'" + "".join(run) + "'")
                run = []
            out.append("\\" + char)
        else:
            run.append(char)
    if run or not out:
        out.append("'" + "".join(run) + "'")
    return "".join(out)


def command_line(argv: Sequence[str]) -> str:
    return " ".join(config_quote(arg) for arg in argv)


def arg_problem(arg: str) -> str:
    if "\0" in arg:
        return "holds a NUL byte, which no program can receive"
    if "\r" in arg or "\n" in arg:
        return "holds a line break, which a supervisord config line cannot carry"
    return ""


def path_problem(value: str) -> str:
    problem = arg_problem(value)
    if problem:
        return problem
    if value != value.strip():
        return "starts or ends with whitespace, which supervisord's config parser drops"
    if _BEFORE_COMMENT.search(value):
        return "has whitespace before ';' or '#', which supervisord reads as the start of a comment"
    encoded = value.encode("utf-8", "surrogateescape")
    if len(encoded) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if any(len(part) > MAX_NAME_BYTES for part in encoded.split(b"/")):
        return f"has a path component longer than {MAX_NAME_BYTES} bytes"
    return ""


def env_problem(value: str) -> str:
    problem = arg_problem(value)
    if problem:
        return problem
    if '"' in value and "'" in value:
        return "holds both quote kinds, which supervisord's environment= cannot carry; put it in an env file"
    if value and (value[0] in "'\"" or value[-1] in "'\""):
        return "starts or ends with a quote, which supervisord's environment= strips; put it in an env file"
    if _BEFORE_COMMENT.search(value):
        return "has whitespace before ';' or '#', which supervisord reads as a comment; put it in an env file"
    return ""
