"""What every listener's edge needs: XML-RPC proxies, a redacting log, results sent back as events."""

from __future__ import annotations

import argparse
import json
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO

from protea_supervisor.stackfile.env import redact

Rpc = Callable[[], Any]


def rpc_factory(environ: Mapping[str, str]) -> Rpc:
    """A fresh proxy per call: probe threads and the protocol loop must not share one HTTP connection."""
    from supervisor import childutils

    return lambda: childutils.getRPCInterface(environ)


class ListenerLog:
    """Timestamped lines on stderr (stdout belongs to the protocol), with env-file values redacted."""

    def __init__(self, stderr: TextIO, secrets: Sequence[str]) -> None:
        self.stderr = stderr
        self.secrets = secrets

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def __call__(self, message: str) -> None:
        self.stderr.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.redact(message)}\n")
        self.stderr.flush()


def execute_each(actions: Sequence[Any], perform: Callable[[Any], None], log: Callable[[str], None],
                 who: str) -> None:  # fmt: skip
    """Perform every action; one that fails is logged and must not stop the others, nor the listener."""
    for action in actions:
        try:
            perform(action)
        except Exception as why:
            log(f"{who}: {type(action).__name__} failed: {type(why).__name__}: {why}")


def call_tolerating(rpc: Rpc, method: str, *args: Any, harmless: str) -> None:
    """An XML-RPC call whose `harmless` fault (ALREADY_STARTED, NOT_RUNNING) means it is already so."""
    try:
        getattr(rpc().supervisor, method)(*args)
    except xmlrpc.client.Fault as fault:
        if harmless not in fault.faultString:
            raise


def send_event(rpc: Rpc, comm_type: str, message: Mapping[str, Any], attempts: int = 30) -> bool:
    """Hand a result back to the listener's own loop as a REMOTE_COMMUNICATION event."""
    for _ in range(attempts):
        try:
            rpc().supervisor.sendRemoteCommEvent(comm_type, json.dumps(message))
            return True
        except Exception:  # supervisord busy or restarting: the result must still arrive
            time.sleep(1)
    return False


def listener_stack(argv: Sequence[str] | None, what: str) -> tuple[Any, ListenerLog]:
    """A listener's `--stack` argument, the stack it names, and a log that redacts that stack's secrets."""
    from protea_supervisor.stackfile.env import secret_values
    from protea_supervisor.stackfile.files import load_stack, machine_facts

    parser = argparse.ArgumentParser(description=f"protea-supervisor {what} (a supervisord event listener)")
    parser.add_argument("--stack", default=None, help="stack file or `demo`, as given to protea-supervisor")
    args = parser.parse_args(argv)
    stack = load_stack(args.stack, machine_facts())
    return stack, ListenerLog(sys.stderr, secret_values(stack.env.files))
