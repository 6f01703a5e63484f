"""A real HTTP server on loopback that speaks the OpenAI chat completions protocol, scripted per test.

It runs in its own thread (with its own event loop), so it answers the runner
processes of the end-to-end tests as well as in-process agents, whatever the
test itself is doing. Each request takes the next scripted `Reply`; when none
is queued, `responder` (or the default) answers: a two-step plan for a request
that asks for structured output, otherwise a short text citing a URL.

    with FakeOpenAI() as server:
        server.script(Reply.error(429, retry_after="0"), Reply.chat("hello"))
        ...  # point an agent at server.url
        assert server.requests[-1].json["stream"] is True
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import free_port


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    json: Any
    at: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        return bool(isinstance(self.json, dict) and self.json.get("stream"))

    @property
    def user_text(self) -> str:
        messages = (self.json or {}).get("messages", [])
        return "\n".join(str(m.get("content", "")) for m in messages if m.get("role") == "user")

    @property
    def wants_plan(self) -> bool:
        return bool((self.json or {}).get("response_format"))


@dataclass
class Reply:
    """What the server does with one request."""

    kind: str  # chat | error | hang | drip | raw | events
    text: str = ""
    status: int = 200
    reason: str = "X"  # the reason phrase of the status line
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] | None = (11, 7)
    chunk_chars: int = 4
    delay_s: float = 0.0  # between streamed chunks (chat), or between drips
    events: tuple[str, ...] = ()  # the `data:` of each server-sent event (events)

    @classmethod
    def chat(
        cls, text: str, usage: tuple[int, int] | None = (11, 7), chunk_chars: int = 4, delay_s: float = 0.0
    ) -> Reply:
        """A completion; streamed as server-sent events when the request asks for a stream."""
        return cls("chat", text=text, usage=usage, chunk_chars=chunk_chars, delay_s=delay_s)

    @classmethod
    def plan(cls, *titles: str, usage: tuple[int, int] | None = (11, 7)) -> Reply:
        steps = [{"title": t, "description": f"Do {t.lower()}"} for t in titles]
        return cls.chat(json.dumps({"steps": steps}), usage=usage)

    @classmethod
    def error(
        cls,
        status: int,
        message: str = "scripted error",
        retry_after: str | None = None,
        reason: str = "X",
        headers: dict[str, str] | None = None,
    ) -> Reply:
        headers = {**(headers or {}), **({"Retry-After": retry_after} if retry_after is not None else {})}
        body = json.dumps({"error": {"message": message, "type": "scripted"}})
        return cls("error", text=body, status=status, headers=headers, reason=reason)

    @classmethod
    def stream(cls, *events: str) -> Reply:
        """A 200 event stream of exactly these `data:` payloads (an error event, garbage)."""
        return cls("events", events=events)

    @classmethod
    def raw(cls, data: str) -> Reply:
        """Send `data` as it is instead of an HTTP answer (a service that speaks another protocol)."""
        return cls("raw", text=data)

    @classmethod
    def hang(cls) -> Reply:
        """Accept the request and never answer (until the client gives up and closes)."""
        return cls("hang")

    @classmethod
    def drip(cls, delay_s: float = 0.05) -> Reply:
        """Start a stream and send a token every `delay_s` forever, until the client closes."""
        return cls("drip", delay_s=delay_s)


def default_responder(req: Request) -> Reply:
    if req.wants_plan:
        return Reply.plan("Research the topic", "Write the answer")
    return Reply.chat("Done: the step is complete. Source: https://example.com/doc")


class FakeOpenAI:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Request] = []
        self.disconnects: list[float] = []  # monotonic times a client closed a hanging/dripping reply
        self.responder: Callable[[Request], Reply] = default_responder
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL an OpenAI client takes (`.../v1`)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *replies: Reply) -> None:
        """Replace the queue: the next requests get these replies, in order."""
        with self._lock:
            self._queue = deque(replies)

    def reset(self) -> None:
        with self._lock:
            self._queue.clear()
            self.requests.clear()
            self.disconnects.clear()
            self.responder = default_responder

    def chat_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FakeOpenAI:
        ready = threading.Event()

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=serve, name="fake-openai", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake OpenAI server did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- HTTP -----------------------------------------------------------------------------------

    def _next(self, req: Request) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        return self.responder(req)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = await reader.readline()
                    if h in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = h.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                raw = await reader.readexactly(int(headers.get("content-length", "0")))
                req = Request(method, path, headers, json.loads(raw) if raw else None)
                self.requests.append(req)
                if not path.endswith("/chat/completions"):
                    await self._send(writer, 404, json.dumps({"error": {"message": "not found"}}))
                    continue
                if not await self._reply(self._next(req), req, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            writer.close()

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: str,
        headers: dict[str, str] | None = None,
        reason: str = "X",
    ) -> None:
        data = body.encode()
        head = [
            f"HTTP/1.1 {status} {reason}",
            "Content-Type: application/json",
            f"Content-Length: {len(data)}",
        ]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def _reply(
        self, reply: Reply, req: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer; False when the connection is done with."""
        if reply.kind == "error":
            await self._send(writer, reply.status, reply.text, reply.headers, reply.reason)
            return True
        if reply.kind == "raw":
            writer.write(reply.text.encode())
            await writer.drain()
            return False
        if reply.kind == "hang":
            await reader.read()  # until the client closes
            self.disconnects.append(time.monotonic())
            return False
        model = (req.json or {}).get("model", "fake")
        usage = reply.usage
        if not req.stream and reply.kind == "chat":
            doc: dict[str, Any] = {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": "stop",
                    }
                ],
            }
            if usage is not None:
                doc["usage"] = {
                    "prompt_tokens": usage[0],
                    "completion_tokens": usage[1],
                    "total_tokens": sum(usage),
                }
            await self._send(writer, 200, json.dumps(doc))
            return True
        head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        writer.write(head.encode())

        async def event(doc: Any) -> None:
            data = f"data: {doc if isinstance(doc, str) else json.dumps(doc)}\n\n".encode()
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            await writer.drain()

        def chunk(content: str | None, finish: str | None = None) -> dict[str, Any]:
            delta = {"content": content} if content is not None else {}
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        if reply.kind == "events":
            for data in reply.events:
                await event(data)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            return True
        if reply.kind == "drip":
            closed = asyncio.ensure_future(reader.read())
            try:
                while not closed.done():
                    try:
                        await event(chunk("tick "))
                    except ConnectionError:
                        break
                    await asyncio.wait({closed}, timeout=reply.delay_s)
            finally:
                self.disconnects.append(time.monotonic())
                closed.cancel()
            return False
        text = reply.text
        for i in range(0, len(text), max(1, reply.chunk_chars)):
            await event(chunk(text[i : i + reply.chunk_chars]))
            if reply.delay_s:
                await asyncio.sleep(reply.delay_s)
        await event(chunk(None, "stop"))
        wants_usage = ((req.json or {}).get("stream_options") or {}).get("include_usage")
        if usage is not None and wants_usage:
            await event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": usage[0],
                        "completion_tokens": usage[1],
                        "total_tokens": sum(usage),
                    },
                }
            )
        await event("[DONE]")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
