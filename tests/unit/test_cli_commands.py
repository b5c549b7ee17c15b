"""The CLI's lazily loaded commands: every command a CLI module defines is reachable by its name, and the
exec wrapper (which starts every program) does not load the rest of the CLI."""

from __future__ import annotations

import importlib
import subprocess
import sys

from protea_supervisor.cli.main import COMMAND_MODULES


def test_every_command_of_every_cli_module_is_listed_under_its_name() -> None:
    defined = {}
    for module in sorted({module for module, _ in COMMAND_MODULES.values()}):
        for command in importlib.import_module(f"protea_supervisor.cli.{module}").COMMANDS:
            defined[command.name] = module
    assert defined == {name: module for name, (module, _) in COMMAND_MODULES.items()}
    for name, (module, attr) in COMMAND_MODULES.items():
        assert getattr(importlib.import_module(f"protea_supervisor.cli.{module}"), attr).name == name


def test_the_exec_wrapper_loads_neither_the_stack_parser_nor_the_deploy_code() -> None:
    probe = (
        "import sys\n"
        "from protea_supervisor.cli.main import main\n"
        "try:\n"
        "    main(['exec', '--', sys.executable, '-c', 'pass'])\n"
        "except SystemExit:\n"
        "    pass\n"
    )
    # exec replaces the process: ask which modules are loaded just before, from an atexit-free probe.
    check = (
        "import os, sys\n"
        "os.execvpe = lambda *a: print(' '.join(sorted(m for m in sys.modules if m.startswith('protea_'))))\n"
        + probe
    )
    loaded = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "protea_supervisor.cli.exec" in loaded
    for heavy in (
        "protea_supervisor.cli.common",
        "protea_supervisor.stackfile.parser",
        "protea_supervisor.deploy.tick",
    ):
        assert heavy not in loaded, heavy
