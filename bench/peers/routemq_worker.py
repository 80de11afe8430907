"""`python -m bench.peers.routemq_worker queue-work ...`: RouteMQ's own CLI (`routemq queue-work`),
with the venv's site-packages ahead of the project root on sys.path. RouteMQ ships a top-level
package named `bootstrap` (its Application), and so does this project; the worker needs RouteMQ's.
"""
from __future__ import annotations

import site
import sys


def main() -> None:
    packages = set(site.getsitepackages())
    sys.path[:] = [p for p in sys.path if p in packages] + [p for p in sys.path if p not in packages]
    sys.modules.pop("bootstrap", None)
    from routemq.cli import main as routemq_cli

    sys.argv = ["routemq", *sys.argv[1:]]
    routemq_cli()


if __name__ == "__main__":
    main()
