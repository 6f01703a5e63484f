"""A Chromium for the dashboard's browser tests: the system's `chromium` (Debian's package), driven
by Playwright through `executable_path` (Playwright's own browser download is not needed).

When no `chromium` is on PATH and the tests run as root with apt-get, it is installed; elsewhere the
tests are skipped with the reason.
"""

from __future__ import annotations

import os
import shutil

from tests.support.packages import apt_install

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
    if explicit := os.environ.get("AGENTBUS_CHROMIUM"):
        return explicit, ""
    return apt_install("chromium", *NAMES)
