"""Where a peer's command-line tools are: the bin/ folder of the venv running this process."""
from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path


def tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def package_version(name: str) -> str:
    return f"{name} {version(name)}"
