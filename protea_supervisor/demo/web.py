"""Web stand-in: answers 200 on every path; the port comes from --port or $PORT (as Next.js does)."""

from __future__ import annotations

import argparse
import os

from protea_supervisor.demo._common import QuietHandler, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")))
    args = parser.parse_args()

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.reply(200, b"<html><body>PROTEA demo</body></html>", "text/html")

    serve("web", args.port, Handler)


if __name__ == "__main__":
    main()
