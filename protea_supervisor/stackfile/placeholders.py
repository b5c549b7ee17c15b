"""Placeholders in stack strings: `{root}`, `{venv}`, ... and `{{`/`}}` for literal braces. Nothing else.

Python's `str.format` would also take `{root.x}`, `{root[0]}`, `{root!r}` and `{root:>9}`, and render objects'
reprs or crash. Here a placeholder is exactly a documented name between braces; anything else with a brace
in it is refused, naming the text that was found (escaped and cut short, so the message stays one line).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# The names in the order the guide (The stack file) documents them.
NAMES = ("root", "venv", "logs", "run", "home", "python", "stack_dir", "queue")
_TOKEN = re.compile(r"\{\{|\}\}|\{[^{}]*\}|[{}]")


class PlaceholderError(ValueError):
    """What is wrong with a string's placeholders; the parser adds the file and the key."""


def shown(text: str, limit: int = 40) -> str:
    """`text` for a one-line message: control characters escaped, long text cut."""
    escaped = text.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


def expand(text: str, values: Mapping[str, str], allowed: tuple[str, ...]) -> str:
    """`text` with each `{name}` replaced by values[name]. `allowed` are the names valid at this key (for
    the message); a name allowed but absent from `values` (`{stack_dir}` outside a host file) is refused."""
    out = []
    last = 0
    for match in _TOKEN.finditer(text):
        out.append(text[last : match.start()])
        last = match.end()
        token = match.group()
        if token == "{{":
            out.append("{")
        elif token == "}}":
            out.append("}")
        elif token in ("{", "}"):
            raise PlaceholderError(f"has an unbalanced '{token}' (write {{{{ and }}}} for literal braces)")
        else:
            name = token[1:-1]
            if name in values and name in allowed:
                out.append(values[name])
                continue
            listed = ", ".join("{" + n + "}" for n in allowed)
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name in allowed:
                raise PlaceholderError(f"uses {{{name}}}, which only a host file's own keys may use")
            if re.match(r"[A-Za-z_][A-Za-z0-9_]*[.\[!:]", name):
                raise PlaceholderError(
                    f"uses {{{shown(name)}}}: a placeholder is a bare name in braces, with no attribute, "
                    f"index, conversion or format; expected one of {listed}"
                )
            raise PlaceholderError(f"uses unknown placeholder {{{shown(name)}}}; expected one of {listed}")
    out.append(text[last:])
    return "".join(out)
