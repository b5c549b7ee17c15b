"""The real servers beside the stand-ins, in one run: the end-to-end stage's figures (uvicorn and FastAPI,
alembic, pika, a real `next build`; scripts/e2e.sh) next to the same figures from the stand-ins the suite and
the other benches use.

  cold start     `up` of a deployed host (after `down`) to the public page; stand-ins: bench/startup.py's
                 gate start (API warm-up 3 s, workers' startsecs 5 s)
  first up       the first `up` on a fresh host: worktree, venv and pip install, npm ci and next build, gate
                 (the stand-ins build nothing: no figure beside it)
  a tick of      an API change, a dependency change, a frontend change: the tick's duration, failed API polls,
  each kind      the web gap, and (real servers) when the API first answered with the new revision;
                 stand-ins: bench/deploy_gaps.py --socket --no-canary (the stage runs no canary)
  down           `down` with 2 s jobs in hand; stand-ins: bench/down_drain.py's `down` (2 s jobs, 0.5 s in)

Needs what scripts/e2e.sh needs. Run: .venv/bin/python bench/real_servers.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deploy_gaps
import down_drain
import startup

HERE = Path(__file__).resolve().parent


def real_figures() -> dict[str, dict[str, Any]]:
    out = Path(tempfile.mkdtemp(prefix="br-")) / "figures.json"
    done = subprocess.run(
        [str(HERE.parent / "scripts" / "e2e.sh"), "-q"], env={**os.environ, "PROTEA_E2E_FIGURES": str(out)}
    )
    if done.returncode != 0:
        raise SystemExit(f"the end-to-end stage failed (exit {done.returncode}); no figures")
    return {f["step"]: f for f in json.loads(out.read_text())}


def ratio(real: float, stand_in: float) -> str:
    return f"{real / stand_in:.2f}" if stand_in else "-"


def main() -> None:
    real = real_figures()
    gaps = {row[0]: row for row in deploy_gaps.measure(no_canary=True, socket=True)}
    served, _returned, _chain, _overhead = startup.gate_start()
    down_s, _completed, _interrupted = down_drain.run_down(2.0, 0.5)
    print("the real servers beside the stand-ins (one run)")
    print(f"{'figure':<44} {'real':>9} {'stand-ins':>10} {'ratio':>6}")

    def line(what: str, value: float, stand_in: float | None) -> None:
        theirs = "-" if stand_in is None else f"{stand_in:.2f}"
        print(f"{what:<44} {value:>9.2f} {theirs:>10} {ratio(value, stand_in) if stand_in else '-':>6}")

    line("cold start to the public page, s", real["cold start"]["serving_after"], served)
    line("first up on a fresh host to the public page, s", real["first up"]["serving_after"], None)
    for kind in ("api-change", "deps-change", "web-change"):
        mine, (_k, _code, took, api, web, _cut) = real[kind], gaps[kind]
        line(f"{kind}: tick, s", mine["seconds"], took)
        line(f"{kind}: commit to the API serving it, s", mine["serving_after"] or 0.0, None)
        print(f"{f'{kind}: failed API polls':<44} {mine['api_failed']:>9} {api.failed:>10} {'-':>6}")
        line(f"{kind}: web gap, s", mine["web_gap"], web.longest)
    web = real["web-change"]["extra"]
    line("web-change: the new page served after, s", web.get("page_after", 0.0), None)
    line("web-change: Next.js's own start (node server.js to a 200), s", web.get("next_start", 0.0), None)
    line("down with jobs in hand, s", real["down"]["seconds"], down_s)


if __name__ == "__main__":
    main()
