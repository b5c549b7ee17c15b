"""A queue worker as PROTEA's scripts/worker.py runs one: pika, prefetch 1, the job on a thread while the main
thread pumps the connection (heartbeats stay alive during a long job), the ack after the job, and SIGTERM or
SIGINT finishing the job in hand before the process exits.

A message is JSON: {"job_id": "...", "seconds": 2.0}. Every start and finish of a job is one line appended to
$PROTEA_JOB_JOURNAL (when set): `<event> <job_id> <queue> <pid> <revision>`.

Run: .venv/bin/python scripts/worker.py --queue protea.jobs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import pika

REVISION = os.environ.get("PROTEA_REVISION", "-")


def journal(event: str, job_id: str, queue: str) -> None:
    path = os.environ.get("PROTEA_JOB_JOURNAL")
    if not path:
        return
    line = f"{event} {job_id} {queue} {os.getpid()} {REVISION}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)  # one write with O_APPEND: lines of several workers never interleave
    finally:
        os.close(fd)


logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
logging.getLogger("pika").setLevel(logging.WARNING)


def log(message: str) -> None:
    # Through logging, as PROTEA's worker logs: a stdout whose reader is gone (supervisord killed) loses the
    # line, and the worker goes on with its job (print would raise BrokenPipeError and end it mid-job).
    logging.info(message)


class Worker:
    def __init__(self, queue: str, url: str) -> None:
        self.queue, self.url = queue, url
        self.stopping = False
        self.in_flight: str | None = None
        self.connection: pika.BlockingConnection | None = None

    def stop(self, signum: int, _frame: object) -> None:
        """Idempotent: set the flag. The connection is pumped in slices of 0.2 s, so an idle worker sees it at
        once, and a busy one after its job."""
        log(f"Stop signal received. queue={self.queue} signal={signum} in_flight={self.in_flight or '-'}")
        self.stopping = True

    def on_message(self, channel: Any, method: Any, _properties: Any, body: bytes) -> None:
        if self.stopping:
            channel.basic_nack(method.delivery_tag, requeue=True)
            return
        job = json.loads(body)
        job_id = str(job["job_id"])
        self.in_flight = job_id
        journal("start", job_id, self.queue)
        log(f"job {job_id} started")
        done = threading.Event()
        thread = threading.Thread(target=lambda: (time.sleep(float(job.get("seconds", 1))), done.set()))
        thread.start()
        assert self.connection is not None
        while not done.is_set():
            # Pump the connection while the job runs: heartbeats are served.
            self.connection.process_data_events(time_limit=0.2)
        thread.join()
        log(f"job {job_id} done")
        journal("done", job_id, self.queue)
        channel.basic_ack(method.delivery_tag)  # the ack comes after the job
        self.in_flight = None

    def run(self) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(self.url))
        channel = self.connection.channel()
        channel.queue_declare(self.queue, durable=True)
        channel.basic_qos(prefetch_count=1)
        tag = channel.basic_consume(self.queue, self.on_message, auto_ack=False)
        log(f"Worker started. queue={self.queue} revision={REVISION}")
        while not self.stopping:
            self.connection.process_data_events(time_limit=0.2)
        # Nothing more is taken; a message delivered but not yet handed over goes back with the channel.
        channel.basic_cancel(tag)
        self.connection.close()


def main() -> int:
    parser = argparse.ArgumentParser(description="A PROTEA-shaped queue worker.")
    parser.add_argument("--queue", default="protea.jobs")
    args = parser.parse_args()
    worker = Worker(args.queue, os.environ.get("PROTEA_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"))
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
    worker.run()
    log("Worker stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
