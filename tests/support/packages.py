"""System packages some tests drive (Debian's `chromium`, `tmux`), installed with apt-get where
they are missing and the tests run as root.

`make test` runs two pytest processes: one install at a time (a file lock), and apt's own locks
waited for rather than failed on.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

LOCK = Path(tempfile.gettempdir()) / "agentbus-tests-apt.lock"
WAIT = ["-o", "DPkg::Lock::Timeout=600"]


def apt_install(package: str, *binaries: str) -> tuple[str | None, str]:
    """The path of the first of `binaries` on PATH, installing `package` first if none is; else
    None and why not."""

    def found() -> str | None:
        return next((p for p in map(shutil.which, binaries) if p), None)

    if path := found():
        return path, ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, f"no {package} on PATH, and apt-get is not available as root to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other process may be installing this very package
        if path := found():
            return path, ""
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *WAIT, package]
        for cmd in (install, ["apt-get", "update", "-q", *WAIT], install):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
            if done.returncode == 0 and cmd is install and found():
                break
        else:
            return None, f"`{' '.join(install)}` failed: {done.stderr.strip()[-300:]}"
    path = found()
    return (path, "") if path else (None, f"{package} was installed but is not on PATH")
