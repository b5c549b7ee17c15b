"""The wall clock of a stack's processes, steppable: with this directory on PYTHONPATH and
PROTEA_TEST_CLOCK_FILE naming a file that holds an offset in seconds ("-3600"), every Python process of the
stack (supervisord, its listeners, programs and ticks, which inherit the environment) reads `time.time()` and
`time.time_ns()` shifted by it. The file is read at most every 0.2 s, so that the processes see a step
together. Writing it steps their wall clock as NTP, `date -s` or a restored VM would, and leaves their
monotonic clock and every other process on the machine alone. (libfaketime does this in C, but its 0.9.10,
Debian's, fails every `time.sleep` with EINVAL when the monotonic clock is left alone.)"""

import os
import time

_FILE = os.environ.get("PROTEA_TEST_CLOCK_FILE", "")

if _FILE:
    _real_time, _real_time_ns, _real_monotonic = time.time, time.time_ns, time.monotonic
    _cache = {"read_at": float("-inf"), "offset": 0.0}

    def _offset() -> float:
        now = _real_monotonic()
        if now - _cache["read_at"] >= 0.2:
            _cache["read_at"] = now
            try:
                with open(_FILE) as handle:
                    _cache["offset"] = float(handle.read().strip() or 0)
            except (OSError, ValueError):
                pass
        return _cache["offset"]

    def _time() -> float:
        return _real_time() + _offset()

    def _time_ns() -> int:
        return _real_time_ns() + int(_offset() * 1_000_000_000)

    time.time = _time
    time.time_ns = _time_ns
