"""This machine's RabbitMQ for the tests: the broker URL, the stand-in worker, publishing jobs."""

from __future__ import annotations

import json
from pathlib import Path

import pika

AMQP = "amqp://guest:guest@127.0.0.1:5672/%2F"
WORKER = Path(__file__).parent / "fixtures" / "rabbit_worker.py"
# The workers.command of a queue served by the stand-in worker; acked jobs go to {root}/acks.log.
WORKER_COMMAND = f"{{python}} -P {WORKER} --queue {{queue}} --record {{stack_dir}}/acks.log"


def connect() -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(AMQP))


def publish(queue: str, jobs: int, seconds: float, first: int = 0) -> None:
    """Jobs first..first+jobs-1 for the stand-in worker, each taking `seconds`."""
    connection = connect()
    channel = connection.channel()
    channel.queue_declare(queue, durable=False, auto_delete=False)
    for job in range(first, first + jobs):
        channel.basic_publish("", queue, json.dumps({"id": job, "seconds": seconds}).encode())
    connection.close()


def delete_queue(name: str) -> None:
    connection = connect()
    connection.channel().queue_delete(name)
    connection.close()
