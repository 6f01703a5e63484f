"""JetStream set-up at start: a not-ready answer (a cluster still electing) is tried again, a
refusal is not."""

from __future__ import annotations

import pytest
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, BadRequestError, ServiceUnavailableError

from agentbus.common.bus import retrying_setup, transient


def test_what_counts_as_not_ready() -> None:
    assert transient(NatsTimeoutError()) and transient(ServiceUnavailableError(code=503))
    assert transient(APIError(code=500))
    assert not transient(BadRequestError(code=400)) and not transient(APIError(code=404))
    assert not transient(ValueError("no"))


async def test_not_ready_is_retried_and_a_refusal_is_not() -> None:
    calls: list[str] = []

    async def flaky() -> str:
        calls.append("flaky")
        if len(calls) < 3:
            raise ServiceUnavailableError(code=503, description="JetStream system temporarily unavailable")
        return "ready"

    assert await retrying_setup("test", flaky, attempts=5) == "ready" and len(calls) == 3

    async def refused() -> None:
        calls.append("refused")
        raise BadRequestError(code=400, description="bad")

    with pytest.raises(BadRequestError):
        await retrying_setup("test", refused, attempts=5)
    assert calls.count("refused") == 1
