"""`protea-supervisor scale`: a queue's worker count, changed in place. Running workers are never restarted;
scale-down stops the newest, each finishing its job (the drain is extension/groupsync.py)."""

from __future__ import annotations

from dataclasses import dataclass

import click

from protea_supervisor.cli.common import (
    changing,
    exe_argv,
    prepare_dirs,
    refuse_during_export,
    rendered,
    stop_deadline,
)
from protea_supervisor.errors import StackFailed, UsageError
from protea_supervisor.stackfile.files import write_atomic
from protea_supervisor.stackfile.overrides import (
    apply_counts,
    load,
    save_counts,
    with_overrides,
)
from protea_supervisor.stackfile.stack import MAX_PROCESSES, Stack
from protea_supervisor.supervisord.apply import apply_plan, stack_is_up, sync_group
from protea_supervisor.supervisord.control import Supervisor
from protea_supervisor.supervisord.logfiles import prune_logs
from protea_supervisor.supervisord.reconcile import plan_from_document, scaled_count
from protea_supervisor.supervisord.render import listener_blocks


@dataclass(frozen=True)
class Ask:
    """What `scale` was asked: a COUNT, --reset, --auto, or a count from the autoscaler (with its reason)."""

    count: str | None = None
    reset: bool = False
    auto: bool = False
    autoscaler: str = ""


@click.command("scale", context_settings={"ignore_unknown_options": True})
@click.argument("queue")
@click.argument("count", required=False)
@click.option(
    "--yes", is_flag=True, help="Let an unnumbered queue grow: its one worker is replaced by numbered ones."
)
@click.option("--no-wait", is_flag=True, help="Return once removed workers have been told to stop.")
@click.option("--force", is_flag=True, help="Scale down even while an export holds the stack-owner lock.")
@click.option("--reset", is_flag=True, help="Drop the recorded count (and a pin): back to the stack file's.")
@click.option(
    "--auto", is_flag=True, help="An autoscaled queue pinned by `scale Q N` follows its backlog again."
)
@click.option("--autoscaler", metavar="WHY", default="", hidden=True, help="A count set by the autoscaler.")
@click.pass_context
def scale_cmd(
    ctx: click.Context,
    queue: str,
    count: str | None,
    yes: bool,
    no_wait: bool,
    force: bool,
    reset: bool,
    auto: bool,
    autoscaler: str,
) -> None:
    """Set a queue's worker count: N, or +N / -N relative. QUEUE is a queue or its worker program.

    Running workers are never restarted: new ones are added beside them, and scale-down stops the
    highest-numbered ones, each finishing its job within its grace. The count is recorded in
    <run>/overrides.json, so a later `render` or `up` keeps it; --reset drops it. On an autoscaled queue,
    `scale Q N` pins the count until `scale Q --auto`.
    """
    if (count is not None) + reset + auto != 1 or (autoscaler and count is None):
        raise UsageError("scale needs a COUNT (N, +N or -N), or --reset, or --auto instead of one.")
    ask = Ask(count, reset, auto, autoscaler)
    what = count if count is not None else ("--reset" if reset else "--auto")
    with changing(
        ctx, f"scale {queue} {what}" + (" (autoscaler)" if autoscaler else ""), overrides=False
    ) as base:
        _scale(base, queue, ask, yes, no_wait, force)


def _scale(base: Stack, queue: str, ask: Ask, yes: bool, no_wait: bool, force: bool) -> None:
    """`base` is the stack file's stack; the recorded counts are read under the operation lock."""
    found = load(base.paths.run)
    stack = with_overrides(base, found)
    target_queue = stack.queue(queue)
    program, before = target_queue.program, target_queue.processes
    recorded_counts, recorded_numbered, recorded_pinned = found.counts, found.numbered, found.pinned
    counts, pinned = dict(recorded_counts), set(recorded_pinned)
    automatic = target_queue.autoscale is not None
    if (ask.auto or ask.autoscaler) and not automatic:
        raise UsageError(f'scale {queue}: {queue} is not autoscaled (no queues."{queue}".autoscale).')
    if ask.autoscaler and program in pinned:
        raise UsageError(
            f"scale {queue}: pinned at {before} by the operator; `scale {queue} --auto` resumes."
        )
    if ask.auto:
        if program not in pinned:
            click.echo(f"{program} already follows its backlog ({before} process(es)); nothing to do.")
            return
        pinned.discard(program)
        save_counts(stack.paths.run, counts, recorded_numbered, pinned)
        click.echo(
            f"{program}: follows its backlog again, from {before} process(es) (the autoscaler decides)."
        )
        return
    if ask.count is None:
        after = base.queue(queue).processes
        counts.pop(program, None)
        pinned.discard(program)
    else:
        try:
            after = scaled_count(before, ask.count, MAX_PROCESSES)
        except ValueError as why:
            raise UsageError(f"scale {queue} {ask.count}: {why}.") from None
        counts[program] = after
        if automatic and not ask.autoscaler:
            pinned.add(program)
    if after == before and ask.count is not None:
        if pinned != recorded_pinned:
            save_counts(stack.paths.run, counts, recorded_numbered, pinned)
            click.echo(f"{program}: pinned at {before}; `scale {queue} --auto` resumes autoscaling.")
            return
        click.echo(f"{program} already runs {before} process(es); nothing to do.")
        return
    if after > 1 and target_queue.singleton:
        raise UsageError(
            f'scale {queue} {ask.count}: {queue} is a singleton queue (queues."{queue}".singleton): '
            "at most one consumer on any host."
        )
    if after < before:
        refuse_during_export(stack, f"scale {program} down", force)
    renaming = after > 1 and not target_queue.numbered
    if renaming and not yes:
        raise UsageError(
            f"{program} runs one unnumbered process; to run {after}, it finishes its job and stops while "
            f"{program}-1..{after} start in its place, and the queue stays numbered. Run again with --yes."
        )
    numbered = recorded_numbered | ({program} if renaming else set())
    # counts and numbered hold every earlier record plus this step: over the stack file they give the stack
    # as it will run.
    new_stack = apply_counts(base, counts, numbered)
    prepare_dirs(new_stack)
    text = rendered(new_stack)
    old_config = stack.config_path.read_text(encoding="utf-8") if stack.config_path.exists() else None
    save_counts(stack.paths.run, counts, numbered, pinned)
    write_atomic(stack.config_path, text, mode=0o600)
    if ask.autoscaler:
        recorded = f"autoscaler: {ask.autoscaler}"
    elif ask.count is None:
        recorded = f"dropped the recorded count in {stack.paths.run / 'overrides.json'}"
    else:
        recorded = f"recorded in {stack.paths.run / 'overrides.json'}"
        if program in pinned:
            recorded += f"; pinned until `scale {queue} --auto`"
    click.echo(f"{program}: {before} -> {after} ({recorded})")
    prune_logs(new_stack, click.echo)
    supervisor = Supervisor(stack.socket_path)
    if not supervisor.is_running():
        click.echo("supervisord is not running; `up` starts the stack with the new count.")
        return
    deadlines = stop_deadline(stack)
    try:
        if before and after:
            # Renaming an unnumbered worker is in place too: it finishes its job while the numbered ones
            # start.
            sync_group(supervisor, program, deadlines, click.echo, wait=not no_wait)
        else:
            # The queue starts or stops running at all: its program is added or removed, and the listeners,
            # which plan by program, are restarted with the new stack. Nothing else pending is applied.
            listeners = [block.name for block in listener_blocks(new_stack, exe_argv())]
            plan = plan_from_document(supervisor.plan_reload()).only([program, *listeners])
            apply_plan(supervisor, plan, deadlines, click.echo, stack_is_up(stack, supervisor))
    except StackFailed:
        if not _group_matches(supervisor, program, new_stack):
            # supervisord did not take the change: the record goes back to what runs.
            save_counts(stack.paths.run, recorded_counts, recorded_numbered, recorded_pinned)
            if old_config is not None:
                write_atomic(stack.config_path, old_config, mode=0o600)
        raise


def _group_matches(supervisor: Supervisor, program: str, stack: Stack) -> bool:
    queue = next(q for q in stack.queues if q.program == program)
    draining = set(supervisor.draining().get(program, []))
    present = {i["name"] for i in supervisor.all_process_info() if i["group"] == program} - draining
    return present == set(queue.process_names())


COMMANDS = (scale_cmd,)
