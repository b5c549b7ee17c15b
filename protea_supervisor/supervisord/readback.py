"""The round-trip guarantee: the config file is read back by supervisord's own parser, the way supervisord
reads it, and what it would run is compared with what the stack asked for. Any difference refuses the stack
in one line naming the file and the dotted key, so no quoting trap can ship silently.

`parse` writes the text to a temporary file exactly as the CLI writes the config and parses that file with
`ServerOptions` (text mode: a carriage return ends a line there too). `differences` is pure: parsed configs
against the blocks `render` made.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from protea_supervisor.errors import RenderError, StackError
from protea_supervisor.stackfile.placeholders import shown
from protea_supervisor.stackfile.stack import Stack
from protea_supervisor.supervisord.render import ListenerBlock, ProgramBlock


def parse(text: str, assume_dirs: Collection[Path] = ()) -> Any:
    """supervisor's ServerOptions after reading `text` from a file; RenderError with supervisord's first line
    if it refuses. `assume_dirs`: directories a dry run would create but must not (see `_assuming`)."""
    from supervisor.options import ServerOptions

    with tempfile.TemporaryDirectory(prefix="protea-check-") as tmp:
        path = Path(tmp) / "supervisord.conf"
        with path.open("w", encoding="utf-8") as handle:  # as files.write_atomic writes it
            handle.write(text)
        options = ServerOptions()
        try:
            with _assuming(assume_dirs):
                options.read_config(str(path))
        except ValueError as why:
            lines = str(why).strip().splitlines()
            raise RenderError(
                f"supervisord would refuse the rendered config: {lines[0] if lines else type(why).__name__}"
            ) from None
    return options


def differences(
    stack: Stack, options: Any, programs: Sequence[ProgramBlock], listeners: Sequence[ListenerBlock]
) -> list[tuple[str, str, str, str]]:
    """(dotted key, what, wanted, read back) for everything supervisord would read other than asked."""
    section = options.configroot.supervisord
    found: list[tuple[str, str, str, str]] = []

    def compare(key: str, what: str, wanted: object, got: object) -> None:
        if wanted != got:
            found.append((key, what, str(wanted), str(got)))

    compare("paths.run", "the log file", str(stack.paths.run / "supervisord.log"), section.logfile)
    compare("paths.run", "the pidfile", str(stack.pidfile), section.pidfile)
    compare("paths.logs", "the child log directory", str(stack.paths.logs), section.childlogdir)
    compare("name", "the identifier", stack.name, section.identifier)
    sockets = [s for s in section.server_configs if s.get("family") == 1]  # socket.AF_UNIX
    compare("paths.run", "the control socket", str(stack.socket_path), sockets[0]["file"] if sockets else "")
    groups = {group.name: group for group in section.process_group_configs}
    wanted_names = [b.name for b in programs] + [b.name for b in listeners]
    for extra in sorted(set(groups) - set(wanted_names)):
        found.append(("programs", "an extra section", "", f"[{extra}]"))
    for block in programs:
        group = groups.get(block.name)
        key = dict(block.keys)
        if group is None:
            found.append((key.get("name", "programs"), "a section", f"[program:{block.name}]", "missing"))
            continue
        # supervisord orders a group's processes by name (-1, -10, -2): the set is what must match.
        names = sorted(pc.name for pc in group.process_configs)
        compare(key.get("name", block.name), "the process names", sorted(block.process_names()), names)
        for config in group.process_configs:
            compare(key["command"], "the command", list(block.argv), _split(config.command))
            compare(key["directory"], "the directory", block.directory, config.directory)
            compare(
                key["environment"], "the environment", dict(block.environment), dict(config.environment or {})
            )
            compare(key["stop_signal"], "the stop signal", _signal(block.stopsignal), config.stopsignal)
            compare(key["stop_grace"], "the stop grace", block.stopwaitsecs, config.stopwaitsecs)
            compare(key["startsecs"], "startsecs", block.startsecs, config.startsecs)
            compare("paths.logs", "the log file", f"{block.log_dir}/{config.name}.log", config.stdout_logfile)
    for listener in listeners:
        group = groups.get(listener.name)
        if group is None:
            found.append(("programs", "a section", f"[eventlistener:{listener.name}]", "missing"))
            continue
        (config,) = group.process_configs
        compare(
            "paths", f"the {listener.name} listener's command", list(listener.argv), _split(config.command)
        )
        log = f"{listener.log_dir}/{listener.name}.log"
        compare("paths.logs", f"the {listener.name} listener's log", log, config.stderr_logfile)
    return found


def verify(
    stack: Stack,
    text: str,
    programs: Sequence[ProgramBlock],
    listeners: Sequence[ListenerBlock],
    assume_dirs: Collection[Path] = (),
) -> None:
    """Parse the written text as supervisord will, and refuse the stack at the first difference."""
    options = parse(text, assume_dirs)
    for key, what, wanted, got in differences(stack, options, programs, listeners):
        raise StackError(
            f"{stack.origin(key)}: {key}: supervisord would read {what} as {shown(got, 60)!r} instead of "
            f"{shown(wanted, 60)!r}, so the stack is refused (see the guide The stack file: what may appear "
            "in commands, paths and env values)."
        )


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError as why:
        return [f"<unparsable: {why}>"]


def _signal(name: str) -> int:
    return int(getattr(signal, f"SIG{name}"))


@contextlib.contextmanager
def _assuming(dirs: Collection[Path]) -> Iterator[None]:
    """Make supervisor's directory checks accept paths under `dirs` for the duration of one parse (a dry
    run must check the config without creating the run and log directories). The CLI is single-threaded,
    and the originals are put back whatever happens."""
    if not dirs:
        yield
        return
    from supervisor import datatypes, options

    roots = [str(d) for d in dirs]
    real_dirpath, real_directory = datatypes.existing_dirpath, datatypes.existing_directory

    def under(value: str) -> bool:
        return any(value == root or value.startswith(root.rstrip("/") + "/") for root in roots)

    def dirpath(value: str) -> str:
        return value if under(os.path.dirname(os.path.expanduser(value))) else str(real_dirpath(value))

    def directory(value: str) -> str:
        return value if under(os.path.expanduser(value)) else str(real_directory(value))

    patched = [
        (datatypes, "existing_dirpath", dirpath),
        (options, "existing_dirpath", dirpath),
        (datatypes, "existing_directory", directory),
        (options, "existing_directory", directory),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in patched]
    try:
        for module, name, replacement in patched:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in saved:
            setattr(module, name, original)
