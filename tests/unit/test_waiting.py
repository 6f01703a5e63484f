"""The tests' one wait helper: what it returns, what counts as not yet, and how it fails."""

from __future__ import annotations

import pytest

from tests.support.waiting import eventually


async def test_returns_the_first_truthy_value_of_a_plain_or_async_check() -> None:
    answers = iter([None, 0, {"status": "done"}])
    assert await eventually(lambda: next(answers), 2) == {"status": "done"}

    calls: list[int] = []

    async def check() -> list[int]:
        calls.append(1)
        return calls if len(calls) == 3 else []

    assert await eventually(check, 2) == [1, 1, 1]


async def test_an_assertion_or_a_listed_error_means_not_yet() -> None:
    tries: list[int] = []

    def asserting() -> bool:
        tries.append(1)
        assert len(tries) >= 3, "not yet"
        return True

    assert await eventually(asserting, 2) is True

    def flaky() -> str:
        tries.append(1)
        if len(tries) < 6:
            raise ConnectionError("broker restarting")
        return "up"

    assert await eventually(flaky, 2, retry_on=(ConnectionError,)) == "up"
    with pytest.raises(KeyError):  # anything else fails at once
        await eventually(lambda: {}["missing"], 2)


async def test_the_timeout_names_what_was_awaited_and_the_last_value_or_error() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0\.1s waiting for the run; last value: 0$"):
        await eventually(lambda: 0, 0.1, "the run")

    rows: list[str] = ["one"]

    def stored() -> bool:
        assert len(rows) == 2, f"{len(rows)} row stored"
        return True

    with pytest.raises(
        AssertionError, match=r"waiting for test_.*stored; last error: AssertionError"
    ) as info:
        await eventually(stored, 0.1)
    assert "1 row stored" in str(info.value) and isinstance(info.value.__cause__, AssertionError)
