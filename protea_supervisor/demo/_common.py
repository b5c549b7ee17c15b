"""What the stand-ins share: line-buffered logging to stdout and a quiet HTTP server."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType


def log(message: str) -> None:
    """A log line; like Python's logging, a stdout nobody reads (supervisord died) loses the line but does
    not kill the program, so an orphan lives on until it is stopped."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"
    with contextlib.suppress(OSError):
        print(f"{stamp} {message}", flush=True)


class QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def reply(self, code: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        self.reply(404, b"not found\n")


class _OnInheritedSocket(ThreadingHTTPServer):
    """Serves on a listening socket it was given (supervisord's fcgi-program socket on fd 0)."""

    def server_bind(self) -> None:
        pass

    def server_activate(self) -> None:
        pass


def serve(name: str, port: int, handler: type[BaseHTTPRequestHandler], fd: int | None = None) -> None:
    """Serve on loopback until TERM or INT, then exit 0; on the listening socket `fd` when given."""
    if fd is None:
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    else:
        server = _OnInheritedSocket(("127.0.0.1", 0), handler, bind_and_activate=False)
        server.socket = socket.socket(fileno=fd)
        port = int(server.socket.getsockname()[1])
    # On TERM the requests in hand are finished before the process exits (server_close joins them), as
    # uvicorn drains: a request accepted in the moment of the stop is answered, not cut.
    server.daemon_threads = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        log(f"{name}: got signal {signum}, stopping")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"{name}: listening on 127.0.0.1:{port}")
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log(f"{name}: stopped")
    sys.exit(0)
