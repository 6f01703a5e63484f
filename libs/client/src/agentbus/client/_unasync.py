"""Writes `_sync_api.py` from `_async_api.py`: one source for both clients' REST calls (the way
httpcore keeps its sync and async halves). Run: `.venv/bin/python -m agentbus.client._unasync`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
RULES = [
    (r"\bAsyncApi\b", "SyncApi"),
    (r"httpx\.AsyncClient\b", "httpx.Client"),
    (r"__aenter__", "__enter__"),
    (r"__aexit__", "__exit__"),
    (r"\.aclose\(\)", ".close()"),
    (r"\basync def\b", "def"),
    (r"\bawait ", ""),
    (r", async \(`AsyncClient` adds the streams\)", ", sync (`Client` adds the streams)"),
]
BANNER = "# Generated from _async_api.py by `python -m agentbus.client._unasync`: do not edit.\n"


def sync_source() -> str:
    text = (HERE / "_async_api.py").read_text()
    for pattern, repl in RULES:
        text = re.sub(pattern, repl, text)
    return BANNER + text


def write(path: Path) -> None:
    """The sync source at `path`, formatted as `ruff format` (the project's formatter) leaves it."""
    path.write_text(sync_source())
    ruff = Path(sys.executable).parent / "ruff"
    subprocess.run([str(ruff), "format", "--quiet", str(path)], check=True)


if __name__ == "__main__":
    write(HERE / "_sync_api.py")
