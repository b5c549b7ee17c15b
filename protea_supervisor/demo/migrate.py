"""Migration stand-in: works for --seconds, then exits with --exit-code (0: schema at head)."""

from __future__ import annotations

import argparse
import sys
import time

from protea_supervisor.demo._common import log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--exit-code", type=int, default=0)
    args = parser.parse_args()
    log("migrate: upgrading to head")
    time.sleep(args.seconds)
    log("migrate: done" if args.exit_code == 0 else f"migrate: FAILED with {args.exit_code}")
    sys.exit(args.exit_code)


if __name__ == "__main__":
    main()
