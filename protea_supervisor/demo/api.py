"""API stand-in: /health answers at once; the readiness URL (/jobs) answers 503 until --ready-after."""

from __future__ import annotations

import argparse
import time

from protea_supervisor.demo._common import QuietHandler, log, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ready-after", type=float, default=2.0, help="seconds before /jobs answers 200")
    args = parser.parse_args()
    ready_at = time.monotonic() + args.ready_after

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/health"):
                self.reply(200, b'{"status":"ok"}', "application/json")
            elif self.path.startswith("/jobs"):
                ready = time.monotonic() >= ready_at
                self.reply(200 if ready else 503, b"[]" if ready else b"warming up", "application/json")
            else:
                self.reply(404, b"not found\n")

    log(f"api: ready in {args.ready_after:g} s")
    serve("api", args.port, Handler)


if __name__ == "__main__":
    main()
