"""The readiness gate as the commands see it: the steps, the message `up` and `gate retry` send it (as a
REMOTE_COMMUNICATION event of type `protea-gate`) and the state file it writes (`<run>/gate.json`). The gate
listener (`listeners/gate.py`, `listeners/gate_handler.py`) owns the decisions; this is what both sides share.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from protea_supervisor.stackfile.files import read_json

COMM_TYPE = "protea-gate"
STATE_FILE = "gate.json"
STEPS = ("infra", "migrate", "api", "web", "tunnel", "workers")
# The steps the public needs, in order: `up` reports their time as the chain.
CHAIN = ("infra", "migrate", "api", "web", "tunnel")


def read_state(run_dir: Path) -> dict[str, Any] | None:
    return read_json(run_dir / STATE_FILE)


def start_request(retry: bool = False) -> tuple[str, str]:
    """The message `up` and `gate retry` send (as REMOTE_COMMUNICATION); returns (request id, payload)."""
    request = uuid.uuid4().hex
    return request, json.dumps({"command": "retry" if retry else "start", "request": request})
