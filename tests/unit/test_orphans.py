"""Which processes are orphans of a stack: pure judgement over /proc-like records."""

from __future__ import annotations

from protea_supervisor.supervisord.orphans import ProcRecord, judge

MARK = "unix:///run/protea/supervisor.sock"


def proc(pid: int, ppid: int, pgid: int, mark: str = MARK, name: str = "", group: str = "") -> ProcRecord:
    env = {"SUPERVISOR_SERVER_URL": mark} if mark else {}
    if name:
        env |= {"SUPERVISOR_PROCESS_NAME": name, "SUPERVISOR_GROUP_NAME": group or name}
    return ProcRecord(pid, ppid, pgid, env)


def test_after_supervisord_died_every_marked_group_is_an_orphan_with_its_forked_children() -> None:
    records = [
        proc(1, 0, 1, mark=""),
        proc(100, 1, 100, name="api"),
        proc(200, 1, 200, name="web"),
        proc(201, 200, 200),  # node, forked by npm: in web's group, inherits the mark
        proc(300, 1, 300, name="worker-jobs-2", group="worker-jobs"),
        proc(400, 1, 400, mark="unix:///other/supervisor.sock", name="api"),  # another stack
        proc(500, 1, 500, mark=""),  # not supervised at all
    ]
    found = judge(records, MARK, supervisord_pid=None, me=999)
    assert [(o.pgid, o.program, o.group, o.pids) for o in found] == [
        (100, "api", "api", (100,)),
        (200, "web", "web", (200, 201)),
        (300, "worker-jobs-2", "worker-jobs", (300,)),
    ]


def test_children_of_the_live_supervisord_are_not_orphans_but_leftovers_of_an_old_one_are() -> None:
    records = [
        proc(50, 1, 50, mark=""),  # the live supervisord
        proc(100, 50, 100, name="api"),
        proc(101, 100, 100),
        proc(300, 1, 300, name="worker-jobs-2", group="worker-jobs"),  # from the supervisord that died
    ]
    found = judge(records, MARK, supervisord_pid=50, me=999)
    assert [o.pgid for o in found] == [300]


def test_the_command_asking_is_never_its_own_orphan() -> None:
    # `protea-supervisor tick` runs as supervisord's deploy-tick program: it carries the mark too.
    records = [proc(700, 1, 700, name="deploy-tick"), proc(701, 700, 700)]
    assert judge(records, MARK, supervisord_pid=None, me=701) == []
