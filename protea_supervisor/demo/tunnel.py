"""ngrok stand-in: an agent API (/api/tunnels) and a "public" endpoint, with failures on demand.

Write a mode into the --control file to make this process fail the way ngrok does:
  hang   the public endpoint stops answering while the process stays alive (the real ngrok failure)
  exit   the process exits with status 1
  5xx    the public endpoint answers 502 with an ngrok error code
  drop   the agent API no longer lists the tunnel
A new process clears the file (it starts healthy); a `sticky-` prefix (sticky-hang, ...) survives restarts,
which makes a flapping tunnel. With --forward, the public endpoint forwards each GET to --addr as ngrok does
(an answer ngrok could not get from the upstream is a 502 with ngrok's error code); without it, it answers a
fixed text.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.error
import urllib.request
from http.server import ThreadingHTTPServer
from pathlib import Path

from protea_supervisor.demo._common import QuietHandler, log, serve


def mode(control: Path | None) -> str:
    if control is None:
        return ""
    try:
        return control.read_text().strip().removeprefix("sticky-")
    except FileNotFoundError:
        return ""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agent-port", type=int, required=True)
    parser.add_argument("--public-url", required=True, help="the URL the agent API reports")
    parser.add_argument("--public-port", type=int, default=0, help="serve the public endpoint on this port")
    parser.add_argument("--addr", default="http://localhost:3000")
    parser.add_argument("--control", type=Path, default=None, help="file holding a failure mode")
    parser.add_argument("--forward", action="store_true", help="forward public requests to --addr")
    args = parser.parse_args()
    control = args.control
    if control is not None and control.exists() and not control.read_text().startswith("sticky-"):
        control.unlink()
    tunnel = {
        "name": "command_line",
        "public_url": args.public_url,
        "proto": "https",
        "config": {"addr": args.addr},
    }

    class Agent(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.startswith("/api/tunnels"):
                listing = {"tunnels": [] if mode(control) == "drop" else [tunnel]}
                self.reply(200, json.dumps(listing).encode(), "application/json")
            else:
                self.reply(404, b"not found\n")

    class Public(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            current = mode(control)
            if current == "hang":
                time.sleep(3600)
            elif current == "5xx":
                self.bad_gateway()
            elif args.forward:
                self.forward()
            else:
                self.reply(200, b"PROTEA via tunnel", "text/plain")

        def forward(self) -> None:
            url = args.addr.rstrip("/") + self.path
            try:
                with urllib.request.urlopen(url, timeout=30) as answer:
                    self.reply(answer.status, answer.read(), answer.headers.get("Content-Type", "text/html"))
            except urllib.error.HTTPError as answer:
                self.reply(answer.code, answer.read(), answer.headers.get("Content-Type", "text/html"))
            except OSError:
                self.bad_gateway()

        def bad_gateway(self) -> None:
            self.send_response(502)
            self.send_header("Ngrok-Error-Code", "ERR_NGROK_8012")
            self.send_header("Content-Length", "0")
            self.end_headers()

    def watch_for_exit() -> None:
        while True:
            if mode(control) == "exit":
                log("tunnel: told to exit")
                os._exit(1)
            time.sleep(0.1)

    if control is not None:
        threading.Thread(target=watch_for_exit, daemon=True).start()
    if args.public_port:
        public = ThreadingHTTPServer(("127.0.0.1", args.public_port), Public)
        public.daemon_threads = True
        threading.Thread(target=public.serve_forever, daemon=True).start()
        log(f"tunnel: public endpoint on 127.0.0.1:{args.public_port}")
    serve("tunnel", args.agent_port, Agent)


if __name__ == "__main__":
    main()
