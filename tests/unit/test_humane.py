"""Output a person reads: ages, ISO times, and the gate's and the watchdog's state as lines (snapshots)."""

from __future__ import annotations

from protea_supervisor.humane import (
    GATE_TIMES,
    TUNNEL_TIMES,
    ago,
    gate_lines,
    iso,
    isoified,
    probe_text,
    tunnel_lines,
)
from protea_supervisor.supervisord.logfiles import stale_logs

NOW = 1_796_108_900.0  # 2026-12-01T07:08:20Z


def test_ages_read_as_a_person_says_them() -> None:
    assert [ago(NOW - s, NOW) for s in (0, 41, 99, 100, 5400, 6000, 7200, 47 * 3600, 3 * 86400)] == [
        "0 s ago", "41 s ago", "99 s ago", "2 min ago", "90 min ago", "2 h ago", "2 h ago", "47 h ago", "3 d ago",
    ]  # fmt: skip
    assert ago(NOW + 8, NOW) == "in 8 s"


def test_json_times_are_iso_and_a_zero_is_null() -> None:
    assert iso(NOW) == "2026-12-01T07:08:20Z"
    doc = {"since": NOW, "finished_at": 0.0, "phase": "done", "restarts": [NOW, NOW - 60], "armed": True}
    assert isoified(doc, (*GATE_TIMES, "restarts", "armed")) == {
        "since": "2026-12-01T07:08:20Z",
        "finished_at": None,
        "phase": "done",
        "restarts": ["2026-12-01T07:08:20Z", "2026-12-01T07:07:20Z"],
        "armed": True,
    }


def test_gate_lines() -> None:
    assert gate_lines(None, NOW) == ["gate: never ran on this host"]
    done = {"phase": "done", "step": "done", "generation": 2, "since": NOW - 60, "finished_at": NOW - 41}
    assert gate_lines(done, NOW) == ["gate: done at 2026-12-01T07:07:39Z (41 s ago)",
                                     "  gate run 2"]  # fmt: skip
    failed = {"phase": "failed", "step": "api", "since": NOW - 200, "reason": "api never got ready\n  tail",
              "failed_process": "api:api"}  # fmt: skip
    assert gate_lines(failed, NOW) == [
        "gate: failed at step api since 2026-12-01T07:05:00Z (3 min ago)",
        "  reason: api never got ready",
        "  process: api:api",
    ]
    assert gate_lines({"phase": "running", "step": "workers", "since": NOW - 3}, NOW) == [
        "gate: running, at step workers since 2026-12-01T07:08:17Z (3 s ago)"
    ]


def test_tunnel_lines_and_a_probe_from_before_the_tunnels_start_is_marked_stale() -> None:
    doc = {"tunnel": "RUNNING", "armed": True, "last_probe_at": NOW - 41, "last_ok": True, "last_detail": "HTTP 200",
           "consecutive_failures": 0, "restarts": [NOW - 7200, NOW - 300], "capped": False, "started_at": NOW - 400}  # fmt: skip
    assert tunnel_lines(doc, NOW, 6) == [
        "tunnel: RUNNING, watched",
        "  last probe: ok 41 s ago (HTTP 200)",
        "  consecutive failures: 0",
        "  restarts in the last hour: 1 (of 6 allowed), last 5 min ago",
    ]
    # A fresh `up`: the tunnel started 3 s ago, the last probe is the old supervisord's.
    fresh = doc | {"started_at": NOW - 3}
    assert probe_text(fresh, NOW) == "ok 41 s ago (HTTP 200) [stale: from before the tunnel's current start]"
    assert probe_text({"last_probe_at": 0}, NOW) == "never probed"
    capped = doc | {"capped": True, "next_restart_at": NOW + 30, "armed": False}
    lines = tunnel_lines(capped, NOW)
    assert lines[0] == "tunnel: RUNNING, not watched (stopped on purpose, or not started yet)"
    assert "RESTART BUDGET SPENT" in lines[-2] and lines[-1] == "  next restart allowed in 30 s"
    assert tunnel_lines(None, NOW) == ["tunnel watch: no state yet (the watchdog has not seen the tunnel)"]
    assert set(TUNNEL_TIMES) >= {"last_probe_at", "restarts", "started_at"}


def test_only_logs_of_processes_once_in_the_stack_and_now_gone_are_deleted_after_the_retention() -> None:
    day = 86400
    ages = {
        "worker-b-1.log": NOW - 30 * day,  # current: kept however old
        "worker-b-2.log": NOW - 10 * day,  # scaled away 10 days ago
        "worker-b-2.log.1": NOW - 12 * day,
        "worker-b-3.log": NOW - 2 * day,  # scaled away, within the retention
        "someone-else.log": NOW - 300 * day,  # never part of the stack
        "notes.txt": NOW - 300 * day,
    }
    seen = {"worker-b-1", "worker-b-2", "worker-b-3"}
    assert stale_logs(ages, {"worker-b-1"}, seen, NOW, 7) == ["worker-b-2.log", "worker-b-2.log.1"]
    assert stale_logs(ages, {"worker-b-1"}, seen, NOW, 0) == []  # 0 keeps them
