"""A WebSocket client that stops reading is cut off and never slows the others (real processes)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from bench.streams import open_stream
from tests.support.client import TERMINAL, Api, assert_gapless
from tests.support.system import System, start_system

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def small_queues() -> Iterator[System]:
    system = start_system(WS_QUEUE_SIZE="5")
    try:
        yield system
    finally:
        system.stop()


async def test_stalled_clients_are_cut_off_and_others_get_everything(small_queues: System) -> None:
    api = Api(small_queues.base_url, small_queues.ws_url)
    url = urlsplit(small_queues.base_url)
    host, port = url.hostname or "", url.port or 0
    try:
        # 2 x 1,003 events of about 350 bytes: far more than a stalled client's socket buffers, its
        # connection's write buffer and its queue hold. A reader that keeps up never needs the queue.
        task = await api.task(require_approval=False, agent_config={"steps": 1000, "step_delay_ms": 0})
        stalled = [
            await open_stream(host, port, "/ws/stream", lambda _: None, stalled=True) for _ in range(3)
        ]
        seen: list[list[dict]] = [[], []]
        ended = asyncio.Event()

        def collector(out: list[dict]):  # type: ignore[no-untyped-def]
            def on_event(raw: bytes) -> None:
                out.append(json.loads(raw))
                if all(sum(e["event_type"] in TERMINAL for e in got) == 2 for got in seen):
                    ended.set()

            return on_event

        readers = [await open_stream(host, port, "/ws/stream", collector(out)) for out in seen]
        t0 = time.monotonic()
        await api.run(task["id"])
        await api.run(task["id"])
        await asyncio.wait_for(ended.wait(), 90)
        took = time.monotonic() - t0
        for reader, got in zip(readers, seen, strict=True):
            assert reader.events == len(got) == 2006 and not reader.closed.done()
            assert_gapless(got)
        # The stalled ones were cut off: once they read again they find, after far fewer events than
        # the others got, the 1013 close frame (or, after 10 s unread, their connection gone).
        for c in stalled:
            assert c.transport is not None
            c.transport.resume_reading()
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in stalled)), 30)
        assert all(c.events < 2006 for c in stalled)
        assert [c.close_code for c in stalled] == [1013] * len(stalled)
        assert took < 90
        for reader in readers:
            reader.close()
    finally:
        await api.close()
