"""CLI: ``python -m tools.lab start glance | stop [all|NAME] | status | env``."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time

from . import RUN_DIR, SERVICES, ServiceError
from .mounts import mounts_under
from .service import stop_leftovers


def _start(names: list[str]) -> int:
    for name in names or list(SERVICES):
        svc = SERVICES[name]()
        t0 = time.monotonic()
        svc.start()
        where = (svc.state.get("endpoint") or svc.state.get("mountpoint")
                 or getattr(svc, "base_url", None) or f"port {svc.state.get('port', '?')}")
        print(f"{name}: running at {where} "
              f"({time.monotonic() - t0:.1f} s; log {svc.log_file})")
    return 0


def _stop(names: list[str]) -> int:
    everything = not names or names == ["all"]
    failed = 0
    for name in reversed(list(SERVICES)) if everything else names:
        try:  # keep going: stop must leave as little behind as it can
            SERVICES[name]().stop()
            print(f"{name}: stopped")
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = 1
    if everything:
        try:
            for name in stop_leftovers(RUN_DIR):
                print(f"{name}: killed leftover")
        except ServiceError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = 1
        left = mounts_under(RUN_DIR)
        if left:  # never delete through a mount
            print(f"error: still mounted under {RUN_DIR}: {[m[0] for m in left]}",
                  file=sys.stderr)
            return 1
        shutil.rmtree(RUN_DIR, ignore_errors=True)
    return failed


def _status(_: list[str]) -> int:
    rows = [SERVICES[n]().status() for n in SERVICES]
    print(json.dumps(rows, indent=2))
    return 0


def _env(_: list[str]) -> int:
    glance = SERVICES["glance"]()
    if not glance.is_running():
        print("# glance is not running: python -m tools.lab start glance", file=sys.stderr)
        return 3
    print(glance.shell_env())
    print("# nova.conf\n" + "\n".join("# " + line for line in glance.nova_conf().splitlines()))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.lab", description=__doc__)
    parser.add_argument("action", choices=["start", "stop", "status", "env"])
    parser.add_argument("names", nargs="*", help="services (default: all)")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in SERVICES and n != "all"]
    if unknown:
        parser.error(f"unknown service(s) {unknown}; known: {', '.join(SERVICES)}")
    if "all" in args.names:
        args.names = []
    try:
        return {"start": _start, "stop": _stop, "status": _status, "env": _env}[
            args.action](args.names)
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
