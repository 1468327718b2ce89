"""``python -m meshfed.dashboard STATE/local/dashboard.json``: serve the dashboard (``meshfed up``
starts it; ``meshfed down`` stops it).

The port is bound before the heavier imports, so ``up`` waits for it only briefly.
"""

from __future__ import annotations

import sys
from pathlib import Path

from meshfed.dashboard.server import DashboardServer, Handler
from meshfed.local.dashboard import read_config
from meshfed.local.paths import RuntimePaths
from meshfed.local.ports import LOOPBACK


def main(args: list[str]) -> int:
    if len(args) != 1:
        print("usage: python -m meshfed.dashboard STATE/local/dashboard.json", file=sys.stderr)
        return 2
    config = Path(args[0]).resolve()
    doc = read_config(config)
    if doc is None:
        print(f"{config}: not a dashboard configuration", file=sys.stderr)
        return 2
    try:
        server = DashboardServer((LOOPBACK, int(doc["port"])), Handler)
    except OSError as exc:
        print(f"cannot listen on {LOOPBACK}:{doc['port']}: {exc}", file=sys.stderr)
        return 1
    from meshfed.dashboard.collect import Collector

    server.collector = Collector(RuntimePaths(config.parent.parent))
    print(f"dashboard on http://{LOOPBACK}:{server.port}/", file=sys.stderr, flush=True)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
