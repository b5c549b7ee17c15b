"""Queue worker stand-in, with today's worker's stop contract.

It takes jobs one after another. On TERM or INT it finishes the job in flight and exits 0; if the job
outlives --grace seconds after the signal, it "requeues" it and exits 143, as scripts/worker.py does.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from types import FrameType

from protea_supervisor.demo._common import log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--job-seconds", type=float, default=3.0)
    parser.add_argument("--idle-seconds", type=float, default=0.2)
    parser.add_argument("--grace", type=float, default=30.0, help="seconds a job may run on after TERM")
    args = parser.parse_args()
    stop = threading.Event()
    in_flight: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        job = f" in_flight={in_flight[0]}" if in_flight else ""
        log(f"Stop signal received. queue={args.queue}{job}")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    revision = os.environ.get("PROTEA_REVISION", "-")
    log(f"Worker started. queue={args.queue} pid={os.getpid()} revision={revision}")
    job = 0
    while not stop.is_set():
        job += 1
        in_flight[:] = [job]
        log(f"job {job} started queue={args.queue}")
        finished = _work(args.job_seconds, stop, args.grace)
        if not finished:
            log(f"job {job} requeued queue={args.queue} (shutdown grace of {args.grace:g} s ran out)")
            sys.exit(143)
        log(f"job {job} done queue={args.queue}")
        in_flight.clear()
        stop.wait(args.idle_seconds)
    log(f"Worker stopped. queue={args.queue}")


def _work(seconds: float, stop: threading.Event, grace: float) -> bool:
    """Run one job; False when the stop signal came and the job did not finish within the grace."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if stop.wait(min(left, 0.1)):
            # Signalled: give the job what is left of it, up to the grace.
            deadline = time.monotonic() + grace
            while time.monotonic() < min(end, deadline):
                time.sleep(min(0.1, max(0.0, end - time.monotonic())))
            return time.monotonic() >= end
    return True


if __name__ == "__main__":
    main()
