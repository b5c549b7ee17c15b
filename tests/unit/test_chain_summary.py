"""`up`'s time line: the public chain, the whole gate and the overhead, from a finished gate run."""

from __future__ import annotations

import time

from protea_supervisor.supervisord.lifecycle import chain_summary, chain_times, own_start_time


def run(*steps: tuple[str, float, float], finished_at: float = 0.0) -> dict[str, object]:
    return {
        "phase": "done",
        "finished_at": finished_at,
        "steps": [{"step": s, "started_at": a, "finished_at": b} for s, a, b in steps],
    }


def test_the_chain_ends_with_the_tunnel_and_the_workers_count_only_in_the_whole_run() -> None:
    doc = run(("migrate", 100.0, 100.8), ("api", 100.8, 104.1), ("web", 104.1, 104.7),
              ("tunnel", 104.7, 105.7), ("workers", 105.7, 111.0), finished_at=111.0)  # fmt: skip
    chain, whole, began = chain_times(doc) or (0.0, 0.0, 0.0)
    assert (round(chain, 6), round(whole, 6), began) == (5.7, 11.0, 100.0)
    # `up` started 1.2 s before the gate's first step and ends 0.3 s after its last.
    line = chain_summary(doc, started_at=98.8, now=111.3)
    assert line.startswith(
        "the public chain (infra, migrate, api, web, tunnel) took 5.7 s, the whole gate 11.0 s"
    )
    assert "overhead 1.5 s" in line


def test_a_run_that_began_before_the_command_is_said_to_be_joined_with_no_overhead_figure() -> None:
    doc = run(("api", 100.0, 103.0), ("web", 103.0, 103.5), ("tunnel", 103.5, 104.5), finished_at=104.5)
    # An interrupted `up` started this run; a second `up` began at 102 and followed it to the end.
    line = chain_summary(doc, started_at=102.0, now=104.7)
    assert line == (
        "the public chain (infra, migrate, api, web, tunnel) took 4.5 s, the whole gate 4.5 s; "
        "this command joined a gate run that began 2.0 s before it"
    )
    assert "overhead" not in line


def test_a_run_without_steps_says_nothing() -> None:
    assert chain_times({"phase": "done", "steps": []}) is None
    assert chain_summary({"phase": "done", "steps": []}, 0.0, 1.0) == ""


def test_this_process_started_before_now_and_not_long_ago() -> None:
    started = own_start_time()
    # Not the boot time, nor the epoch: this test process started within the last hours.
    assert time.time() - 6 * 3600 < started <= time.time() + 1  # btime has a 1 s resolution
