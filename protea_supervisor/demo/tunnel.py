"""ngrok stand-in: serves an agent-style /api/tunnels listing one tunnel for --public-url."""

from __future__ import annotations

import argparse
import json

from protea_supervisor.demo._common import QuietHandler, serve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--agent-port", type=int, required=True)
    parser.add_argument("--public-url", required=True)
    parser.add_argument("--addr", default="http://localhost:3000")
    args = parser.parse_args()
    listing = {
        "tunnels": [
            {
                "name": "command_line",
                "public_url": args.public_url,
                "proto": "https",
                "config": {"addr": args.addr},
            }
        ]
    }

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/api/tunnels"):
                self.reply(200, json.dumps(listing).encode(), "application/json")
            else:
                self.reply(404, b"not found\n")

    serve("tunnel", args.agent_port, Handler)


if __name__ == "__main__":
    main()
