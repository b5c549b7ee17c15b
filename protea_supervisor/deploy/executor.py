"""The deploy executor: `Deployer` runs plan steps (`plan.Step`) by name and remembers which ran, so a
rollback plan undoes exactly those; `failure_kind` gives `plan.blame` its word for what went wrong (the deploy
record's file is `record.py`). Shared by the server's tick (`tick.py`) and a node's follow (`follow.py`)."""

from __future__ import annotations

from collections.abc import Sequence

from protea_supervisor.deploy.plan import Step, Work
from protea_supervisor.deploy.rollout import (
    apply_revision,
    declare_revision,
    install,
    prove_canary,
    restart_api,
    run_migrate,
    verify,
    verify_node,
)
from protea_supervisor.deploy.tickenv import TickEnv
from protea_supervisor.deploy.webbuild import build_web, served_build, switch_web
from protea_supervisor.deploy.worktree import StepError, git
from protea_supervisor.errors import (
    GateFailed,
    LockCorrupt,
    LockTimeout,
    OperationBusy,
    ProgramFailed,
    StopTimeout,
    SupervisorDown,
    write_failed,
)

# What a failed gate step says about the revision (see deploy.blame).
GATE_FAILURE_KIND = {"migrate": "exit", "api": "probe", "workers": "program", "web": "probe"}


def failure_kind(error: Exception) -> str:
    """deploy.blame's word for an exception raised by a step."""
    if isinstance(error, StepError):
        return error.kind
    if isinstance(error, GateFailed):
        return GATE_FAILURE_KIND.get(error.step, "refused")
    if isinstance(error, ProgramFailed):
        return "program"
    if isinstance(error, StopTimeout):
        return "stop-timeout"
    if isinstance(error, SupervisorDown):
        return "supervisord"
    if isinstance(error, (OperationBusy, LockCorrupt, LockTimeout)):
        return "lock"
    return "refused"  # RpcRefused and anything else supervisord or the host refused


# --- the executor ---------------------------------------------------------------------------------------


class Deployer:
    """Runs plan steps in order and remembers which ran, so the rollback plan undoes exactly those."""

    def __init__(self, env: TickEnv, revision: str, previous: str, work: Work) -> None:
        self.env = env
        self.revision = revision
        self.previous = previous
        self.work = work
        self.old_build = served_build(env.stack)
        self.new_build = self.old_build
        self.done: list[Step] = []
        self.current = ""  # the step running, or the one that failed

    def run(self, steps: Sequence[Step]) -> None:
        for step in steps:
            self.current = step.name
            self.env.report(f"step {step.name}: {step.says}")
            try:
                getattr(self, "_" + step.name.replace("-", "_"))()
            except OSError as why:
                # A full disk met by a step's own write (a frontend build unpacked into the run dir) is the
                # host's failure, not a bug: as a domain error it is rolled back and blamed on the host.
                full = write_failed(why)
                if full is None:
                    raise
                raise full from None
            self.done.append(step)

    # --- forward steps ---
    def _checkout(self) -> None:
        git(self.env.stack.paths.root, "checkout", "--quiet", "--detach", "--force", self.revision)

    def _install(self) -> None:
        install(self.env)

    def _build(self) -> None:
        env = self.env
        self.new_build = str(build_web(env.stack, self.revision, env.environ, env.secrets, env.report))

    def _switch(self) -> None:
        switch_web(self.env.stack, self.new_build)
        self.env.report(f"serving the new frontend build {self.new_build}")

    def _migrate(self) -> None:
        run_migrate(self.env)

    def _canary(self) -> None:
        prove_canary(self.env, self.revision)

    def _api(self) -> None:
        restart_api(self.env, self.revision)

    def _apply(self) -> None:
        apply_revision(self.env, self.revision)

    def _start(self) -> None:
        self.env.write_config(self.revision)
        self.env.start_supervisord()
        self.env.run_gate()

    def _verify(self) -> None:
        verify(self.env)

    def _verify_node(self) -> None:
        verify_node(self.env, self.revision)

    def _declare(self) -> None:
        declare_revision(self.env, self.revision)

    # --- undo steps ---
    def _undo_checkout(self) -> None:
        git(self.env.stack.paths.root, "checkout", "--quiet", "--detach", "--force", self.previous)

    def _undo_install(self) -> None:
        install(self.env)

    def _undo_switch(self) -> None:
        switch_web(self.env.stack, self.old_build)

    def _undo_apply(self) -> None:
        apply_revision(self.env, self.previous)

    def _undo_declare(self) -> None:
        declare_revision(self.env, self.previous)
