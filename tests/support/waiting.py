"""The one way tests wait for something: poll a check until it holds, with a deadline."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def eventually(
    check: Callable[[], Any | Awaitable[Any]],
    timeout: float = 20.0,
    what: str | None = None,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> Any:
    """Poll `check` until it returns something truthy, and return that value.

    `check` is a plain or an async function. A check that raises AssertionError (or one of
    `retry_on`, e.g. a broker error while it restarts) has not held yet either, so a check may
    return a value to wait for, or assert and end with `return True`. After `timeout` seconds
    this fails naming `what` (by default the check's name) and the last value or error.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        error: BaseException | None = None
        try:
            value = check()
            if inspect.isawaitable(value):
                value = await value
        except (AssertionError, *retry_on) as exc:
            error, last = exc, f"last error: {exc!r}"
        else:
            if value:
                return value
            last = f"last value: {value!r}"
        if time.monotonic() >= deadline:
            name = what or getattr(check, "__qualname__", repr(check)).replace("<locals>.", "")
            raise AssertionError(f"timed out after {timeout}s waiting for {name}; {last}") from error
        await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
