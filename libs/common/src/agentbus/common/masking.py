"""Showing a secret without revealing it: URLs with their password, token and query hidden."""

from __future__ import annotations

import re
from typing import Any


def mask_url(value: str) -> str | None:
    """`scheme://user:***@host/path?***`, or None when the value is not a URL.

    Only for showing a secret URL: a password, a token (`nats://token@host`) and the query
    (which may carry a password) are hidden. Everything before the last `@` counts as user
    info, so a password with an unescaped `/`, `?` or `@` in it is hidden too.
    """
    scheme, sep, rest = value.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return None
    userinfo, at, rest = rest.rpartition("@")
    cut = min((i for i in (rest.find(c) for c in "?#") if i >= 0), default=-1)
    rest = rest if cut < 0 else rest[:cut] + "?***"
    if not at:
        return f"{scheme}://{rest}"
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user + ':***' if colon else '***'}@{rest}"


def secret_repr(value: Any) -> str:
    """The repr of a secret setting: a URL masked, anything else `'***'`."""
    if value is None or value == "":
        return repr(value)
    masked = mask_url(value) if isinstance(value, str) else None
    return repr(masked) if masked is not None else "'***'"
