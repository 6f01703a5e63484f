"""The one rule for an agent kind's name, shared by the gateway, the runner and the subjects.

A kind becomes subject tokens (`run.start.<kind>`) and part of a durable consumer's name
(`runners-<kind>`, see `subjects.kind_consumer`), so it is one or more dot-separated words of
ASCII letters, digits, `_` and `-`, at most 100 characters: no empty token, no wildcard, no
space or other character a subject or a consumer name cannot carry.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

AGENT_KIND_MAX_LENGTH = 100
# `(?!\n)`: Python's `$` also matches before a final newline, and msgspec searches with Python's re;
# in the published JSON Schema (ECMA regex) the lookahead changes nothing.
AGENT_KIND_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$(?!\n)"

# The type of an agent kind field (the gateway's task create/update `agent`).
AgentKind = Annotated[
    str, msgspec.Meta(min_length=1, max_length=AGENT_KIND_MAX_LENGTH, pattern=AGENT_KIND_PATTERN)
]


def valid_agent_kind(kind: object) -> bool:
    """Whether `kind` is a usable agent kind: exactly what an `AgentKind` field accepts."""
    try:
        msgspec.convert(kind, AgentKind)
    except msgspec.ValidationError:
        return False
    return True
