"""`python -m pvesim`: run the emulator; print one JSON line with the connection facts, log to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from pvesim.schema import VERSIONS, default_version

    ap = argparse.ArgumentParser(prog="python -m pvesim", description="Proxmox VE 8.4 / 9.1 API emulator (pvesim)")
    ap.add_argument(
        "--pve-version",
        default=default_version(),
        choices=VERSIONS,
        help="the PVE release to emulate: its API schema and the behaviour that changed "
        "(default: $PVESIM_PVE_VERSION, else 8.4)",
    )
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8006, help="0 = pick a free port")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--guests", type=int, default=0, help="seeded guests spread over the nodes")
    ap.add_argument("--seed", type=int, default=0)
    tls = ap.add_mutually_exclusive_group()
    tls.add_argument("--tls", dest="tls", action="store_true", default=True)
    tls.add_argument("--no-tls", dest="tls", action="store_false")
    ap.add_argument("--state", help="load state from FILE if it exists; save it there on exit")
    ap.add_argument("--time-scale", type=float, default=1.0, help="sim seconds per real second")
    ap.add_argument("--password", help="root@pam password (default: derived from --seed)")
    ap.add_argument("--token-secret", help="secret of root@pam!pvesim (default: a UUID derived from --seed)")
    ap.add_argument(
        "--task-seconds",
        action="append",
        default=[],
        metavar="TYPE=SECONDS",
        help="duration of a task type in sim seconds, e.g. vzcreate=5 (repeatable)",
    )
    ap.add_argument("--auth-fail-delay", type=float, default=0.0, help="seconds to delay 401 answers (real PVE: 3)")
    ap.add_argument(
        "--status-lag",
        type=float,
        default=0.0,
        help="sim seconds a new guest shows status 'unknown' in /cluster/resources (real PVE: ~10)",
    )
    ap.add_argument("--latency", type=float, default=0.0, metavar="MS",
                    help="milliseconds every API request waits before it is answered (network round trip)")
    ap.add_argument("--certdir", help="write the self-signed certificate here (default: temp dir)")
    ap.add_argument("--info-file", help="also write the JSON line to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s pvesim %(levelname)s %(message)s",
    )
    from pvesim.persist import load_state, save_state
    from pvesim.schema import SchemaNotFoundError, load_schema
    from pvesim.server import SimServer
    from pvesim.state import Sim, SimOptions

    try:
        load_schema(version=args.pve_version)
    except SchemaNotFoundError as e:
        print(f"pvesim: {e}", file=sys.stderr)
        return 2
    if args.nodes < 1 or args.guests < 0 or args.time_scale <= 0 or args.latency < 0:
        print("pvesim: --nodes must be at least 1, --guests and --latency at least 0 and --time-scale above 0",
              file=sys.stderr)
        return 2
    seconds: dict[str, float] = {}
    for item in args.task_seconds:
        k, sep, v = item.partition("=")
        try:
            seconds[k] = float(v)
        except ValueError:
            sep = ""
        if not sep:
            print(f"pvesim: --task-seconds wants TYPE=SECONDS, got {item!r}", file=sys.stderr)
            return 2
    sim = Sim(
        SimOptions(
            nodes=args.nodes,
            guests=args.guests,
            seed=args.seed,
            time_scale=args.time_scale,
            password=args.password,
            token_secret=args.token_secret,
            task_seconds=seconds,
            auth_fail_delay=args.auth_fail_delay,
            status_lag=args.status_lag,
            pve_version=args.pve_version,
            latency=args.latency,
        )
    )
    if args.state:
        sim.state_file = args.state
        if Path(args.state).exists():
            try:
                load_state(sim, args.state)
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(
                    f"pvesim: cannot load state file {args.state}: {e}; move it away or fix it",
                    file=sys.stderr,
                )
                return 2
    try:
        server = SimServer(
            sim,
            host=args.host,
            port=args.port,
            tls=args.tls,
            certdir=Path(args.certdir) if args.certdir else None,
        )
    except OSError as e:
        print(
            f"pvesim: cannot listen on {args.host}:{args.port}: {e.strerror}; pick another --port (0 = any)",
            file=sys.stderr,
        )
        return 2
    info: dict[str, Any] = server.info()
    line = json.dumps(info)
    if args.info_file:
        Path(args.info_file).write_text(line + "\n")
    print(line, flush=True)
    logging.info(
        "listening on %s (PVE %s, %d nodes, %d guests)",
        server.url,
        sim.release.version,
        len(sim.nodes),
        len(sim.guests),
    )

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if args.state:
            save_state(sim, args.state)
            logging.info("state saved to %s", args.state)
        server.httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
