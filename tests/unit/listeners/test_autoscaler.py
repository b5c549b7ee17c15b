"""The autoscaler listener's handler, replayed: a change is one line, one Scale and a counted event with
the reading that caused it; a silent broker is said once; every look is published."""

from __future__ import annotations

from protea_supervisor.listeners.actions import Log
from protea_supervisor.listeners.autoscaler import AutoState, Publish, Scale, handle, state_from_file

from protea_supervisor.operations.autoscale import Reading
from protea_supervisor.stackfile.stack import Autoscale

AUTO = {"q": Autoscale(min=1, max=6, target_backlog=10, scale_up_delay=0, scale_down_window=30, cooldown=0)}


def test_a_change_is_a_line_a_scale_and_a_counted_event_with_its_reading() -> None:
    state, actions = handle(AUTO, AutoState(), {"q": Reading(backlog=45, here=1)}, now=0.0, wall=1000.0)
    assert [type(a) for a in actions] == [Log, Scale, Publish]
    assert actions[1] == Scale("q", 5, actions[1].why) and "backlog 45" in actions[1].why
    doc = actions[-1].doc
    assert doc["changes"] == {"q up": 1}
    assert doc["queues"]["q"]["last_change"] == {
        "at": 1000.0, "from": 1, "to": 5, "backlog": 45, "elsewhere": 0, "why": actions[1].why,
    }  # fmt: skip
    # The next look keeps the last change and counts nothing new.
    state, actions = handle(AUTO, state, {"q": Reading(backlog=45, here=5)}, now=5.0, wall=1005.0)
    assert [type(a) for a in actions] == [Publish]
    assert actions[0].doc["queues"]["q"]["last_change"]["to"] == 5
    assert actions[0].doc["changes"] == {"q up": 1}


def test_a_silent_broker_is_said_once_and_its_return_once() -> None:
    state, lines = AutoState(), []
    for backlog in (0, None, None, None, 0, 0):
        state, actions = handle(AUTO, state, {"q": Reading(backlog=backlog, here=1)}, now=0.0, wall=0.0)
        lines += [a.message for a in actions if isinstance(a, Log)]
    assert len(lines) == 2 and "did not answer" in lines[0]


def test_counters_and_last_changes_survive_a_restart_of_the_listener() -> None:
    _, actions = handle(AUTO, AutoState(), {"q": Reading(backlog=45, here=1)}, now=0.0, wall=1000.0)
    restored = state_from_file(actions[-1].doc)
    assert restored.changes == {"q up": 1} and restored.shown["q"]["last_change"]["to"] == 5
    assert state_from_file(None) == AutoState()


def test_a_refused_change_is_said_once_and_its_end_once() -> None:
    import subprocess
    from types import SimpleNamespace

    from protea_supervisor.listeners.autoscaler import Edge

    lines: list[str] = []
    edge = Edge(SimpleNamespace(), lines.append)

    def finished(code: int) -> bool:
        child = subprocess.Popen(["sh", "-c", f"echo 'error: another command holds the lock'; exit {code}"],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
        child.wait()
        edge.children["q"] = child
        return edge.busy("q")

    assert finished(8) is False and finished(8) is False
    assert lines == ["autoscale q: scale exited 8: error: another command holds the lock; asked again"]
    assert finished(0) is False
    assert lines[1:] == ["autoscaler: scale q: changes go through again"]
