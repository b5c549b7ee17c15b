"""What supervisord's `[fcgi-program]` gives an API switch: a restart vs a start-first replacement.

Groundwork for replacing the API instead of restarting it (issue 16). supervisord holds the listening socket
of an fcgi-program group and passes it to each process on fd 0 (`uvicorn --fd 0` serves on it); the socket
is reference-counted by the group's running processes (supervisor/socket_manager.py), so it stays open as
long as one process of the group runs. A stand-in API (it warms up for 2 s before it accepts, as uvicorn
runs the app's startup before serving; each request takes 0.2 s; on SIGTERM it stops accepting, finishes
what it has and exits) serves on such a socket, and is polled every 50 ms (each poll its own connection):
  restart  `supervisorctl restart` of the one process: the socket closes between stop and start
  switch   a second process of the group is started; once an answer comes from its pid (it accepts only
           when warm, so that answer proves it on its own), the first is stopped and drains
`ctl s` is how long the supervisorctl commands took (for the switch, with the wait for the successor).
Run: .venv/bin/python bench/fcgi_switch.py
"""

from __future__ import annotations

import collections
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stacks import free_port, wait

APP = textwrap.dedent(
    """
    import os, signal, socket, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    time.sleep(2.0)  # the app's startup, before it accepts

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(0.2)
            body = str(os.getpid()).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class OnFd0(ThreadingHTTPServer):
        daemon_threads = False
        block_on_close = True

        def server_bind(self):
            pass

        def server_activate(self):
            pass

    server = OnFd0(("127.0.0.1", 0), Handler, bind_and_activate=False)
    server.socket = socket.socket(fileno=0)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    server.serve_forever()
    server.server_close()  # waits for the requests in hand
    """
)


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bf-"))
    port = free_port()
    (root / "app.py").write_text(APP)
    conf = root / "supervisord.conf"
    conf.write_text(textwrap.dedent(f"""
        [supervisord]
        logfile={root}/supervisord.log
        pidfile={root}/supervisord.pid
        [unix_http_server]
        file={root}/supervisor.sock
        [rpcinterface:supervisor]
        supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
        [supervisorctl]
        serverurl=unix://{root}/supervisor.sock
        [fcgi-program:api]
        socket=tcp://127.0.0.1:{port}
        command={sys.executable} {root}/app.py
        process_name=api-%(process_num)d
        numprocs=2
        autostart=false
        startsecs=0
        stopwaitsecs=30
        stdout_logfile={root}/%(process_num)d.log
        redirect_stderr=true
        """))  # fmt: skip
    bin_dir = Path(sys.executable).parent
    ctl = [str(bin_dir / "supervisorctl"), "-c", str(conf)]
    subprocess.run([str(bin_dir / "supervisord"), "-c", str(conf)], check=True)
    url = f"http://127.0.0.1:{port}/"

    def run(*args: str) -> str:
        return subprocess.run([*ctl, *args], capture_output=True, text=True).stdout.strip()

    def answer() -> str:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return str(response.read().decode())
        except OSError as why:
            return f"failed: {type(why).__name__}"

    rows = []
    try:
        for mode in ("restart", "switch"):
            run("start", "api:api-0")
            wait(lambda: not answer().startswith("failed"), 30, "api-0 answering")
            answers: list[str] = []
            slowest = [0.0]
            done = threading.Event()

            def timed(into: list[str] = answers, worst: list[float] = slowest) -> None:
                began = time.monotonic()
                into.append(answer())
                worst[0] = max(worst[0], time.monotonic() - began)

            def poll(stop: threading.Event = done) -> None:
                threads = []
                while not stop.is_set():
                    thread = threading.Thread(target=timed)
                    thread.start()
                    threads.append(thread)
                    stop.wait(0.05)
                for thread in threads:
                    thread.join()

            poller = threading.Thread(target=poll)
            poller.start()
            time.sleep(1)
            began = time.monotonic()
            if mode == "restart":
                run("restart", "api:api-0")
            else:
                run("start", "api:api-1")
                successor = run("pid", "api:api-1")
                wait(lambda s=successor, seen=answers: s in seen[-20:], 30, "an answer from api-1")
                run("stop", "api:api-0")
            took = time.monotonic() - began
            time.sleep(1)
            done.set()
            poller.join()
            counts = collections.Counter("failed" if a.startswith("failed") else "ok" for a in answers)
            rows.append((mode, took, counts["ok"], counts["failed"], slowest[0]))
            run("stop", "all")
    finally:
        run("shutdown")
    print("an API on a socket supervisord holds, polled every 50 ms (2 s warm-up, 0.2 s requests)")
    print(f"{'how':<8} {'ctl s':>7} {'answered':>9} {'failed':>7} {'slowest answer s':>17}")
    for mode, took, ok, failed, worst in rows:
        print(f"{mode:<8} {took:>7.1f} {ok:>9} {failed:>7} {worst:>17.2f}")


if __name__ == "__main__":
    main()
