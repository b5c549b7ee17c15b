"""The start order and the stage verdicts, replayed over process-info snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protea_supervisor.files import builtin_stack_text, parse_toml
from protea_supervisor.stack import HostFacts, parse_stack
from protea_supervisor.startup import Stage, assess, needs_start, stages


def info(
    group: str, state: str, name: str | None = None, exitstatus: int = 0, spawnerr: str = ""
) -> dict[str, Any]:
    return {
        "group": group,
        "name": name or group,
        "statename": state,
        "exitstatus": exitstatus,
        "spawnerr": spawnerr,
        "description": "",
    }


def test_stages_follow_manage_sh_order_and_drop_disabled_programs() -> None:
    layers = [
        ("d", parse_toml(builtin_stack_text("protea"), "d")),
        ("h", {"programs": {"tunnel": {"enabled": False}}}),
    ]
    plan = stages(parse_stack(layers, HostFacts(Path("/h"), "/py")))
    assert [s.label for s in plan] == ["migrate", "api", "workers", "web"]
    assert plan[0].oneshot and not plan[1].oneshot
    assert "worker-predictions-batch" in plan[2].groups


MIGRATE = Stage("migrate", ("migrate",), True, 60)
WORKERS = Stage("workers", ("worker-ping", "worker-batch"), False, 60)


def test_oneshot_is_done_only_after_exit_zero() -> None:
    assert not assess(MIGRATE, [info("migrate", "RUNNING")]).done
    assert assess(MIGRATE, [info("migrate", "EXITED", exitstatus=0)]).done
    failed = assess(MIGRATE, [info("migrate", "EXITED", exitstatus=3)])
    assert failed.failed and failed.reason == "exited with status 3"


def test_service_stage_waits_for_every_process_and_fails_on_fatal() -> None:
    snapshot = [info("worker-ping", "RUNNING"), info("worker-batch", "STARTING", "worker-batch-1")]
    verdict = assess(WORKERS, snapshot)
    assert not verdict.done and verdict.waiting_on == ("worker-batch-1",)
    fatal = assess(
        WORKERS,
        [
            info("worker-ping", "RUNNING"),
            info("worker-batch", "FATAL", "worker-batch-1", spawnerr="can't find command"),
        ],
    )
    assert fatal.failed and fatal.failed_process == "worker-batch:worker-batch-1"
    assert "can't find command" in fatal.reason
    assert assess(
        WORKERS, [info("worker-ping", "RUNNING"), info("worker-batch", "RUNNING", "worker-batch-1")]
    ).done


def test_unknown_group_fails_instead_of_waiting_forever() -> None:
    assert assess(WORKERS, [info("worker-ping", "RUNNING")]).failed


def test_needs_start_skips_running_and_finished_oneshots() -> None:
    assert needs_start(MIGRATE, [info("migrate", "EXITED", exitstatus=0)]) == []
    assert needs_start(MIGRATE, [info("migrate", "EXITED", exitstatus=1)]) == ["migrate:migrate"]
    snapshot = [
        info("worker-ping", "RUNNING"),
        info("worker-batch", "STOPPED", "worker-batch-2"),
        info("api", "STOPPED"),
    ]
    assert needs_start(WORKERS, snapshot) == ["worker-batch:worker-batch-2"]
