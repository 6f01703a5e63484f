"""The sync client's REST calls are the async ones with `async`/`await` taken out: the generated
`_sync_api.py` must be what `python -m agentbus.client._unasync` writes from `_async_api.py` now."""

from __future__ import annotations

from pathlib import Path

from agentbus.client import _unasync


def test_sync_api_is_generated_from_the_async_one(tmp_path: Path) -> None:
    fresh = tmp_path / "_sync_api.py"
    _unasync.write(fresh)
    current = (_unasync.HERE / "_sync_api.py").read_text()
    assert current == fresh.read_text(), "stale: run `.venv/bin/python -m agentbus.client._unasync`"
    assert "async " not in current and "await " not in current
