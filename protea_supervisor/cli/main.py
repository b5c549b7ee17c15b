"""The operator CLI: the command group and the entry point that turns errors into exit codes.

The commands live in cli_stack (render, up, down, scale, reload, gate), cli_status (status, logs, tunnel),
cli_deploy (tick, trigger), cli_ops (queues, backup, restore, install-unit), cli_lock (lock) and cli_exec
(exec). The CLI modules are the only place that reads the environment and prints; only `main` exits.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from protea_supervisor import __version__, exitcodes
from protea_supervisor.cli.settings import Settings
from protea_supervisor.errors import ProteaError, UsageError, write_failed

# Each command and the module that defines it, imported only when the command runs (or help lists it): the
# exec wrapper starts every program, so its start-up must not import the whole CLI (0.25 s -> ~0.1 s).
COMMAND_MODULES = {
    "render": ("stack", "render_cmd"),
    "up": ("stack", "up_cmd"),
    "down": ("stack", "down_cmd"),
    "scale": ("scale", "scale_cmd"),
    "reload": ("stack", "reload_cmd"),
    "gate": ("stack", "gate_group"),
    "status": ("status", "status_cmd"),
    "logs": ("status", "logs_cmd"),
    "tunnel": ("status", "tunnel_group"),
    "tick": ("deploy", "tick_cmd"),
    "trigger": ("deploy", "trigger_cmd"),
    "deploys": ("deploy", "deploys_cmd"),
    "rollback": ("deploy", "rollback_cmd"),
    "unpin": ("deploy", "unpin_cmd"),
    "queues": ("ops", "queues_cmd"),
    "backup": ("ops", "backup_cmd"),
    "restore": ("ops", "restore_cmd"),
    "install-unit": ("ops", "install_unit_cmd"),
    "lock": ("lock", "lock_group"),
    "exec": ("exec", "exec_cmd"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMAND_MODULES})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMAND_MODULES:
            import importlib

            module, attr = COMMAND_MODULES[name]
            command: click.Command = getattr(importlib.import_module(f"protea_supervisor.cli.{module}"), attr)
            return command
        return super().get_command(ctx, name)


GROUP_HELP = (
    "Run the PROTEA stack under supervisord.\n\n"
    + exitcodes.help_lines(exitcodes.COMMANDS)
    + "\n\n`tick` has its own codes: see `protea-supervisor tick --help`."
)


@click.group(cls=LazyGroup, help=GROUP_HELP, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--stack",
    "stack_choice",
    envvar="PROTEA_STACK",
    metavar="PATH|demo",
    help="Host stack file layered over the PROTEA defaults, or `demo`. Env: PROTEA_STACK.",
)
@click.option(
    "--lock-wait",
    type=float,
    metavar="SECONDS",
    help="How long a command that changes the stack waits for another one to finish "
    "(else $PROTEA_LOCK_WAIT, else control.operation_wait, 900 s).",
)
@click.version_option(__version__, prog_name="protea-supervisor")
@click.pass_context
def cli(ctx: click.Context, stack_choice: str | None, lock_wait: float | None) -> None:
    ctx.obj = Settings(stack_choice=stack_choice, lock_wait=lock_wait)


COMPLETE_VAR = "_PROTEA_SUPERVISOR_COMPLETE"


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL (click's own completion).

    \b
    bash: eval "$(protea-supervisor completion bash)"   (e.g. in ~/.bashrc)
    zsh:  eval "$(protea-supervisor completion zsh)"    (e.g. in ~/.zshrc)
    fish: protea-supervisor completion fish > ~/.config/fish/completions/protea-supervisor.fish
    """
    from click.shell_completion import get_completion_class

    completion = get_completion_class(shell)
    assert completion is not None  # the Choice admits only the shells click ships
    click.echo(completion(cli, {}, "protea-supervisor", COMPLETE_VAR).source())


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: every error becomes one line on stderr and its documented exit code."""
    try:
        result: Any = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="protea-supervisor",
            standalone_mode=False,
        )
    except click.exceptions.NoArgsIsHelpError as why:
        # A bare group (`gate`, `lock`, `tunnel`, or no command at all) asks what there is: its help.
        click.echo(why.ctx.get_help() if why.ctx is not None else why.format_message())
        sys.exit(0)
    except click.exceptions.UsageError as why:
        # click's own usage errors exit 2, which the lock contract reserves for contention.
        message = why.format_message()
        hint = f" (see: {why.ctx.command_path} --help)" if why.ctx is not None else ""
        click.echo(f"error: {message}{hint}", err=True)
        sys.exit(UsageError.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(exitcodes.INTERRUPTED)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except ProteaError as why:
        click.echo(f"error: {one_line(str(why))}", err=True)
        sys.exit(why.exit_code)
    except click.ClickException as why:
        click.echo(f"error: {one_line(why.format_message())}", err=True)
        sys.exit(exitcodes.BAD_INPUT)
    except Exception as bug:
        full = write_failed(bug)
        if full is not None:
            # A write outside the atomic writer (a log line appended) on a full or read-only filesystem.
            click.echo(f"error: {full}", err=True)
            sys.exit(full.exit_code)
        if os.environ.get("PROTEA_DEBUG"):
            raise
        detail = one_line(str(bug))
        click.echo(
            f"internal error: {type(bug).__name__}: {detail} (PROTEA_DEBUG=1 shows the traceback)", err=True
        )
        sys.exit(exitcodes.BAD_INPUT)
    sys.exit(result if isinstance(result, int) else 0)


def one_line(message: str) -> str:
    """Errors are one line; a gate failure's log tail is the only multi-line detail, and it is indented."""
    lines = message.splitlines()
    if len(lines) <= 1 or all(line.startswith("    ") for line in lines[1:]):
        return message
    return " ".join(line.strip() for line in lines if line.strip())
