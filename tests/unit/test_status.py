"""Status rows from supervisord's process info, its log, and /proc."""

from __future__ import annotations

import os
from typing import Any

from protea_supervisor.supervisord.status import format_uptime, group_rss_kb, rows, spawn_counts, table

LOG = """\
2026-11-28 06:00:00,000 INFO supervisord started with pid 10
2026-11-28 06:00:01,000 INFO spawned: 'api' with pid 11
2026-11-28 06:00:09,000 INFO stopped: api (exit status 0)
2026-11-28 06:10:00,000 INFO supervisord started with pid 20
2026-11-28 06:10:01,000 INFO spawned: 'api' with pid 21
2026-11-28 06:10:05,000 INFO exited: api (exit status 1; not expected)
2026-11-28 06:10:06,000 INFO spawned: 'api' with pid 22
2026-11-28 06:10:06,000 INFO spawned: 'worker-batch-1' with pid 23
"""


def test_spawn_counts_start_at_the_last_supervisord_start() -> None:
    assert spawn_counts(LOG) == {"api": 2, "worker-batch-1": 1}


def test_rows_carry_state_pid_rss_uptime_and_restarts() -> None:
    infos: list[dict[str, Any]] = [
        {
            "name": "api",
            "group": "api",
            "statename": "RUNNING",
            "pid": 22,
            "start": 1000,
            "now": 1065,
            "description": "",
        },
        {
            "name": "migrate",
            "group": "migrate",
            "statename": "EXITED",
            "pid": 0,
            "start": 900,
            "now": 1065,
            "description": "",
        },
    ]
    api, migrate = rows(infos, {22: 204800}, spawn_counts(LOG))
    assert (api.pid, api.rss_mb, api.uptime_s, api.restarts) == (22, 200.0, 65, 1)
    assert (migrate.pid, migrate.rss_mb, migrate.uptime_s) == (0, None, 0)
    text = table([api, migrate])
    assert "api" in text and "200.0" in text and "1m05s" in text
    refused_info = {**infos[1], "name": "worker-jobs", "group": "worker-jobs", "statename": "FATAL"}
    why = "revision abc is not the declared def"
    (worker,) = rows([refused_info], {}, {}, {"worker-jobs:worker-jobs": why})
    assert table([worker]).splitlines()[1].endswith(f"  refused: {why}")
    assert "refused" not in table([api, migrate])


def test_format_uptime() -> None:
    assert format_uptime(59) == "0m59s"
    assert format_uptime(3 * 3600 + 120) == "3h02m"
    assert format_uptime(2 * 86400 + 3600) == "2d01h"


def test_group_rss_reads_this_process_group() -> None:
    pgrp = os.getpgrp()
    assert group_rss_kb([pgrp])[pgrp] > 1000
