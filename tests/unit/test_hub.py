"""The hub's per-client subscription: order, duplicates, gaps, overflow, heartbeats, direct writes,
revocation.

No sockets and no database: a fake hub answers the stored-log lookups, a fake writer stands in for
a WebSocket's transport.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import pytest

from agentbus.gateway.streams.hub import Hub
from agentbus.gateway.streams.subscription import Frame, GoingAway, Gone, Revoked, Subscription, TooSlow


class FakeHub:
    def __init__(
        self, stored: dict[int, Frame] | None = None, heartbeat_s: float = 10, queue_size: int = 100
    ):
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.stored = stored or {}

    async def stored_between(self, run_id: str, after: int, before: int) -> list[Frame]:
        return [self.stored[s] for s in range(after + 1, before) if s in self.stored]

    async def last_seq_before(self, run_id: str, moment: object) -> int:
        return 0  # the run began after the client connected


class FakeWriter:
    def __init__(self) -> None:
        self.out: list[list[dict[str, str]]] = []
        self.writable = True
        self.cut: int | None = None

    def ready(self) -> bool:
        return self.writable

    def write(self, messages: list[dict[str, str]]) -> None:
        self.out.append([m["text"] for m in messages])

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def cut_off(self, code: int, reason: str) -> None:
        self.cut = code


def f(seq: int, run: str = "r") -> Frame:
    return Frame(run, "t", seq, f'{{"seq":{seq}}}', "progress")


async def take(frames: Any, n: int) -> list[Frame | None]:
    return [await asyncio.wait_for(frames.__anext__(), 2) for _ in range(n)]


async def test_replay_then_live_without_duplicates_and_gaps_filled_from_the_log() -> None:
    hub = FakeHub(stored={4: f(4), 5: f(5)})
    client = Subscription(hub, "r", None)  # type: ignore[arg-type]
    client.replay = deque([f(1), f(2), f(3)])
    frames = client.frames()
    client.offer(f(3))  # arrived live while the log was read: a duplicate
    client.offer(f(6))  # 4 and 5 were stored by another gateway but not announced yet
    got = await take(frames, 6)
    assert [x.seq for x in got if x] == [1, 2, 3, 4, 5, 6]


async def test_a_client_that_falls_behind_is_told_to_go_and_others_are_not() -> None:
    hub = FakeHub(queue_size=3)
    slow, fast = Subscription(hub, None, None), Subscription(hub, None, None)  # type: ignore[arg-type]
    fast_frames = fast.frames()
    for seq in range(1, 6):
        slow.offer(f(seq))
        fast.offer(f(seq))
        await take(fast_frames, 1)
    assert slow.overflowed and not fast.dead
    with pytest.raises(TooSlow):
        await take(slow.frames(), 1)


async def test_heartbeat_when_idle_and_going_away_on_close() -> None:
    client = Subscription(FakeHub(heartbeat_s=0.05), None, None)  # type: ignore[arg-type]
    frames = client.frames()
    assert await take(frames, 1) == [None]
    client.close()
    with pytest.raises(GoingAway):
        await take(frames, 1)


async def test_direct_writes_while_idle_batched_and_in_order() -> None:
    client = Subscription(FakeHub(stored={3: f(3)}), None, None)  # type: ignore[arg-type]
    writer = client.direct = FakeWriter()  # type: ignore[assignment]
    frames = client.frames()
    pump = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0)  # the pump is idle: frames go straight to the writer
    client.offer(f(1))
    client.offer_many([f(2), f(2)])
    assert writer.out == [[f(1).text], [f(2).text]] and not pump.done()
    client.offer(f(4))  # a gap: the pump fills it from the log, in order
    got = [await asyncio.wait_for(pump, 2), *(await take(frames, 1))]
    assert [x.seq for x in got if x] == [3, 4]
    writer.writable = False  # a full buffer: frames queue, and past the limit the client is cut off
    client.limit = 2
    pump = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0)
    for seq in range(5, 9):
        client.offer(f(seq))
    assert writer.cut == 1013
    pump.cancel()


async def test_a_revoked_client_gets_nothing_more_and_is_told_why() -> None:
    client = Subscription(FakeHub(), None, None)  # type: ignore[arg-type]
    writer = client.direct = FakeWriter()  # type: ignore[assignment]
    frames = client.frames()
    pump = asyncio.ensure_future(frames.__anext__())
    await asyncio.sleep(0)  # idle: frames would go straight to the writer
    client.offer(f(1))
    writer.writable = False
    client.offer(f(2))  # queued behind a full buffer
    client.revoke("this key was revoked")
    client.revoke("this key has expired")  # the first reason stands
    client.offer(f(3))
    assert writer.cut == 4401 and writer.out == [[f(1).text]]
    with pytest.raises(Revoked, match="this key was revoked"):
        await asyncio.wait_for(pump, 2)


async def test_a_client_gone_ends_its_pump_at_once_and_is_sent_nothing_more() -> None:
    client = Subscription(FakeHub(heartbeat_s=60), None, None)  # type: ignore[arg-type]
    writer = client.direct = FakeWriter()  # type: ignore[assignment]
    pump = asyncio.ensure_future(client.next())
    await asyncio.sleep(0)  # idle, its next heartbeat a minute away
    client.offer(f(1))
    client.gone()  # the WebSocket's reader saw the client leave
    client.offer(f(2))
    with pytest.raises(Gone):
        await asyncio.wait_for(pump, 2)
    assert writer.out == [[f(1).text]] and writer.cut is None  # no close frame to a client gone


def test_sse_and_heartbeat_encoding() -> None:
    assert f(7).sse() == b'id: 7\ndata: {"seq":7}\n\n'
    assert Hub.heartbeat_frame().startswith('{"event_type":"heartbeat"')


async def test_nothing_overtakes_a_gap_being_filled() -> None:
    # Another gateway copy announced seq 2 before this one delivered seq 1: the stream fills 1 from
    # the log; seq 3, arriving meanwhile, must wait until 1 and 2 have gone out.
    hub = FakeHub(stored={1: f(1)})
    client = Subscription(hub, None, None)  # type: ignore[arg-type]
    frames = client.frames()
    client.offer(f(2))
    first = await asyncio.wait_for(frames.__anext__(), 2)
    client.offer(f(3))  # queued while the pump holds seq 1
    sent = [first, *client.take_ready()]
    second = await asyncio.wait_for(frames.__anext__(), 2)
    sent += [second, *client.take_ready()]
    assert [x.seq for x in sent if x] == [1, 2, 3]
