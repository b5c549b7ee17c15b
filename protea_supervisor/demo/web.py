"""Web stand-in: 200 on every path (503 before --ready-after); the port is --port or $PORT, as in Next.js."""

from __future__ import annotations

import argparse
import os
import time

from protea_supervisor.demo._common import QuietHandler, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    parser.add_argument("--ready-after", type=float, default=0.0, help="seconds of 503 before it serves")
    args = parser.parse_args()
    ready_at = time.monotonic() + args.ready_after

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            if time.monotonic() < ready_at:
                self.reply(503, b"starting", "text/plain")
            else:
                self.reply(200, b"<html><body>PROTEA demo</body></html>", "text/html")

    serve("web", args.port, Handler)


if __name__ == "__main__":
    main()
