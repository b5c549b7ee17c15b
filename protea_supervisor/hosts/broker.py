"""RabbitMQ's own count of a queue's consumers, asked over AMQP (a passive `queue.declare`): what a singleton
worker's start waits on before it consumes.

The Postgres lock says who may consume; the broker says who does. They differ for a moment when a holder's
lock session is lost (a restarted Postgres, a cut network) and another host takes the lock before the
holder's keeper does: that holder is told to stop (SIGTERM) and finishes its job first, still a consumer.
The management API's consumer counts are statistics, seconds behind; the passive declare is the queue's own
answer. pika is the client PROTEA's workers use; it is imported only where a singleton starts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

ANSWER_WAIT = 5.0  # seconds the broker has to answer one question
POLL = 0.2  # seconds between two counts while a previous consumer finishes


@dataclass(frozen=True)
class Count:
    consumers: int | None  # None: the broker could not be asked (`why` says why)
    why: str = ""
    waited: float = 0.0  # seconds spent waiting for consumers to leave


def consumers(url: str, queue: str) -> Count:
    """The consumers of `queue` now (0 when it does not exist yet)."""
    import pika
    from pika.exceptions import AMQPError, ChannelClosedByBroker

    # pika raises ValueError, IndexError... on a malformed URL; its message may quote the URL, password
    # and all.
    try:
        parameters = pika.URLParameters(url)
    except Exception:
        return Count(None, "the broker URL does not parse")
    parameters.socket_timeout = ANSWER_WAIT
    parameters.stack_timeout = ANSWER_WAIT
    parameters.blocked_connection_timeout = ANSWER_WAIT
    parameters.connection_attempts = 1
    parameters.client_properties = {"connection_name": f"protea-supervisor: {queue}'s consumers"}
    try:
        connection = pika.BlockingConnection(parameters)
    except (AMQPError, OSError) as why:
        return Count(None, f"the broker did not answer ({type(why).__name__})")
    try:
        declared = connection.channel().queue_declare(queue, passive=True)
        return Count(int(declared.method.consumer_count))
    except ChannelClosedByBroker as why:
        return Count(0) if why.reply_code == 404 else Count(None, f"the broker refused ({why.reply_text})")
    except (AMQPError, OSError) as why:
        return Count(None, f"the broker did not answer ({type(why).__name__})")
    finally:
        with contextlib.suppress(Exception):
            connection.close()


def wait_alone(url: str, queue: str, wait: float) -> Count:
    """Count `queue`'s consumers until there are none, for up to `wait` seconds: the last count (0: alone;
    more: a consumer that did not leave in time; None: the broker could not be asked)."""
    began, waited = time.monotonic(), 0.0
    while True:
        count = consumers(url, queue)
        if count.consumers in (0, None) or waited >= wait:
            return Count(count.consumers, count.why, waited)
        time.sleep(POLL)
        waited = time.monotonic() - began
