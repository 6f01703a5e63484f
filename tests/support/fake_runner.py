"""Answers agent discovery (`run.runners.info`) as a runner would, from a thread of its own.

For gateway tests that run no runner: the gateway refuses runs of kinds no
runner serves. A thread with its own event loop, because Litestar's test
client may block the test's loop while a request is handled.
"""

from __future__ import annotations

import asyncio
import threading

import nats

from agentbus.contracts import AgentDescriptor, RunnerInfo, encode, subjects


class FakeRunnerInfo:
    def __init__(self, url: str, kinds: list[str] | None = None) -> None:
        self.url = url
        self.kinds = kinds if kinds is not None else ["scripted"]  # change it to change the answers
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None

    def start(self) -> FakeRunnerInfo:
        ready = threading.Event()

        async def serve() -> None:
            nc = await nats.connect(self.url)

            async def answer(msg) -> None:  # type: ignore[no-untyped-def]
                agents = [AgentDescriptor(kind=k, description=f"{k} agent") for k in self.kinds]
                await msg.respond(encode(RunnerInfo(instance="fake-runner", version="0", agents=agents)))

            await nc.subscribe(subjects.RUN_INFO, cb=answer)
            await nc.flush()
            self._stop = asyncio.Event()
            ready.set()
            await self._stop.wait()
            await nc.close()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(serve())
            self._loop.close()

        self._thread = threading.Thread(target=run, name="fake-runner-info", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake runner info did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
