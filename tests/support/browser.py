"""A Chromium for the dashboard's browser tests: the system's `chromium` (Debian's package), driven
by Playwright through `executable_path` (Playwright's own browser download is not needed).

When no `chromium` is on PATH and the tests run as root with apt-get, it is installed; elsewhere the
tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess

NAMES = ("chromium", "chromium-browser")


def find_chromium() -> str | None:
    explicit = os.environ.get("AGENTBUS_CHROMIUM")
    if explicit:
        return explicit
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_or_reason() -> tuple[str | None, str]:
    """The path of a Chromium to drive, installing Debian's when it can; else None and why not."""
    path = find_chromium()
    if path:
        return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "no chromium on PATH, and apt-get is not available as root to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            return None, f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}"
    path = find_chromium()
    return (path, "") if path else (None, "chromium was installed but is not on PATH")
