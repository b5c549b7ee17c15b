"""API stand-in: /health answers at once; the readiness URL (/jobs) answers 503 until --ready-after.

With --fd N it serves on the listening socket it was given (supervisord's `[fcgi-program]` socket on fd 0,
as `uvicorn --fd 0` does) and, like uvicorn, runs its start-up first: it accepts only after --ready-after,
so every request it answers is a ready one, and requests sent meanwhile wait in the socket's backlog."""

from __future__ import annotations

import argparse
import os
import time

from protea_supervisor.demo._common import QuietHandler, log, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--port", type=int, help="listen on 127.0.0.1:PORT")
    where.add_argument("--fd", type=int, help="serve on this inherited listening socket (0: supervisord's)")
    parser.add_argument("--ready-after", type=float, default=2.0, help="seconds before /jobs answers 200")
    args = parser.parse_args()
    ready_at = time.monotonic() + args.ready_after

    class Handler(QuietHandler):
        def end_headers(self) -> None:
            # Which process answered: on a shared socket, a switch proves its new process by this.
            self.send_header("X-Api-Pid", str(os.getpid()))
            super().end_headers()

        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/health"):
                self.reply(200, b'{"status":"ok"}', "application/json")
            elif self.path.startswith("/jobs"):
                ready = time.monotonic() >= ready_at
                self.reply(200 if ready else 503, b"[]" if ready else b"warming up", "application/json")
            else:
                self.reply(404, b"not found\n")

    log(f"api: ready in {args.ready_after:g} s")
    if args.fd is not None:
        time.sleep(args.ready_after)  # the app's start-up, before it accepts (uvicorn's lifespan)
    serve("api", args.port or 0, Handler, fd=args.fd)


if __name__ == "__main__":
    main()
