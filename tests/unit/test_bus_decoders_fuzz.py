"""Hostile bytes into every bus decoder and message handler: nothing escapes a handler.

A message on the bus is hostile input. Whatever its bytes, headers and subject, each service's
handler drops it (logged, dead-lettered, terminated), answers an error to a request, or takes it:
it never raises (that would end a subscription's callback or a consumer loop), never leaves a
message to come back forever, and never stores half of it. A decoder meant to refuse refuses with
msgspec.DecodeError (ValidationError is one), the error its callers catch.

Each handler is called directly: a SQLite database in a temporary directory where it stores, small
fakes for the broker's side (a message that records how it was settled, a client that records what
was published). Payloads: random bytes, random JSON, awkward literals (huge ints, NaN, invalid
UTF-8, nesting thousands deep) alone, and spliced into a valid message in place of one field.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any
from unittest import mock

import msgspec
import nats.js.errors
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from litestar.exceptions import HTTPException
from nats import micro
from sqlalchemy import func, select

from agentbus.common.db import make_engine, migrate
from agentbus.contracts import (
    AgentDescriptor,
    MetricsGet,
    MetricsQuery,
    MetricsSummaryQuery,
    Ping,
    Pong,
    ResourceDeleted,
    RunCheckpointHead,
    RunControl,
    RunnerHeartbeat,
    RunnerInfo,
    RunStart,
    RunStats,
    RunWake,
    ServiceError,
    decode_event,
    encode,
    subjects,
)
from agentbus.contracts import events as ev
from agentbus.contracts.codec import decoder
from agentbus.contracts.events import SEQ_MAX
from agentbus.contracts.messages import (
    ERROR_HEADER,
    MetricCreate,
    MetricOut,
    MetricsPage,
    MetricsReport,
    MetricsReportQuery,
    MetricsSeries,
    MetricsSeriesQuery,
    MetricsSummary,
)
from agentbus.gateway import ingest as ingest_module
from agentbus.gateway.agents import Discovery
from agentbus.gateway.bus import Bus
from agentbus.gateway.ingest import ORIGIN_HEADER, EventIngest
from agentbus.gateway.reaper import Reaper
from agentbus.gateway.store import GatewayStore
from agentbus.gateway.store.tables import artifacts, run_events, runs, tasks
from agentbus.gateway.streams.hub import Hub
from agentbus.metrics.consumers import EventsConsumer, LifecycleConsumer
from agentbus.metrics.handlers import RequestHandlers
from agentbus.metrics.service import MIGRATIONS as METRICS_MIGRATIONS
from agentbus.metrics.service import VERSION_TABLE as METRICS_VERSION_TABLE
from agentbus.metrics.store import MetricsStore
from agentbus.runner.endpoints import Endpoints
from agentbus.runner.record import RunRecord
from agentbus.runner.service import Held, Runner
from agentbus.runner.settings import Settings as RunnerSettings
from agentbus.runner.store import Checkpoint, RunStore, Stored, UnusableRunError
from agentbus.runner.work import Work
from tests.support.gateway_db import engine_with_a_run

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
# Deterministic in `make test` (a CI run never fails on a case no earlier run saw); explore further
# with FUZZ_RANDOM=1 and more examples, e.g. FUZZ_N=5000.
FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_N", "200")),
    derandomize=os.environ.get("FUZZ_RANDOM") != "1",
    deadline=None,
    database=None,  # nothing written to the working tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
FUZZ_DB = settings(FUZZ, max_examples=120)  # each example writes to SQLite

# --- payloads ------------------------------------------------------------------------------------


def _deep(depth: int, opening: bytes, closing: bytes) -> bytes:
    return opening * depth + b"1" + closing * depth


AWKWARD: list[bytes] = [
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e400",
    b"1e308",
    b"-0",
    b"2147483647",
    b"2147483648",
    b"9223372036854775807",
    b"9223372036854775808",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"1" + b"0" * 400,  # an int no float holds
    b"1" + b"0" * 5000,  # past Python's int digits limit
    b'"\xff\xfe"',  # not UTF-8
    b'"\xed\xa0\x80"',  # an encoded surrogate
    b'"\xc3"',  # a truncated sequence
    b'"\\ud800"',  # a lone surrogate escape
    b'"a\\u0000b"',  # NUL
    b'"0001-01-01T00:00:00+01:00"',  # before year 1 once in UTC
    b'"9999-12-31T23:59:59-01:00"',  # after year 9999 once in UTC
    b'"9999-12-31T23:59:59Z"',
    b'"2024-02-30T00:00:00Z"',
    b"null",
    b"true",
    b"[]",
    b"{}",
    b'""',
    _deep(100, b"[", b"]"),
    _deep(990, b"[", b"]"),
    _deep(2000, b"[", b"]"),
    _deep(2000, b'{"a":', b"}"),
    _deep(20000, b"[", b"]"),
    b"[" * 3000,  # never closed
]

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**31, 2**63, 2**64, -(2**63) - 1, 10**400])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
fragments = st.one_of(st.sampled_from(AWKWARD), json_values.map(encode), st.binary(max_size=24))

HOLE = "@@hole@@"
HOLE_JSON = encode(HOLE)


def _paths(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [(*prefix, "zz_unknown")]  # an unknown field: skipped by the decoder, not by the store
    for key, value in doc.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


@st.composite
def spliced(draw: st.DrawFn, valid: dict[str, Any], fragment: st.SearchStrategy[bytes] = fragments) -> bytes:
    """`valid` with one field (or a new one) replaced by a hostile fragment, as raw bytes."""
    # An unknown field is skipped by the decoder, however deep: a place msgspec itself recurses.
    path = draw(st.just(("zz_unknown",)) | st.sampled_from(_paths(valid)))
    doc = copy.deepcopy(valid)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = HOLE
    return encode(doc).replace(HOLE_JSON, draw(fragment), 1)


def payloads(*valid: Any) -> st.SearchStrategy[bytes]:
    docs = [msgspec.to_builtins(v) for v in valid]
    return st.one_of(
        st.binary(max_size=256),
        fragments,
        st.sampled_from(docs).flatmap(spliced),
        st.sampled_from(docs).flatmap(lambda doc: spliced(doc, st.sampled_from(AWKWARD))),
        st.sampled_from(docs).flatmap(spliced).map(lambda raw: raw[: len(raw) // 2]),  # cut short
        st.sampled_from(valid).map(encode),
    )


_offsets = st.none() | st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23))
)
dates = st.datetimes(min_value=datetime.min, max_value=datetime.max, timezones=_offsets) | st.sampled_from(
    [  # out of range once in UTC
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=-1))),
    ]
)
_floats = st.floats(allow_nan=False, allow_infinity=False)
_stats = st.builds(
    RunStats,
    duration=_floats,
    steps=st.integers(),
    tokens_prompt=st.none() | st.integers(),
    cost_usd=st.none() | _floats,
)


def typed_events(seqs: st.SearchStrategy[int], run_id: str = "r") -> st.SearchStrategy[bytes]:
    """Events that decode, with values at and past what the stores take (dates, ints, floats)."""
    head: dict[str, Any] = {
        "id": st.text(max_size=8),
        "seq": seqs,
        "timestamp": dates,
        "task_id": st.just("t"),
        "run_id": st.just(run_id),
    }
    plan = st.dictionaries(st.text(max_size=5), json_values, max_size=3)
    return st.one_of(
        st.builds(
            ev.ApprovalRequired, data=st.builds(ev.ApprovalRequiredData, plan=plan, timeout_s=_floats), **head
        ),
        st.builds(
            ev.ArtifactCreated,
            data=st.builds(
                ev.ArtifactData,
                name=st.text(max_size=8),
                size=st.integers(),
                content_type=st.just("text/plain"),
            ),
            **head,
        ),
        st.builds(
            ev.Progress,
            data=st.builds(
                ev.ProgressData,
                step=st.integers(),
                total_steps=st.integers(),
                progress_percent=_floats,
                current_phase=st.text(max_size=5),
            ),
            **head,
        ),
        st.builds(
            ev.Completion,
            data=st.builds(
                ev.CompletionData, results=json_values, duration=_floats, stats=st.none() | _stats
            ),
            **head,
        ),
        st.builds(
            ev.Failure, data=st.builds(ev.FailureData, error=st.text(max_size=8), stats=_stats), **head
        ),
    ).map(encode)


def nasty(*valid: Any) -> list[bytes]:
    """For each valid message, what msgspec itself raised on (RecursionError, UnicodeDecodeError):
    a field nested too deep, text that is not UTF-8 in a field it skips and in one it decodes.
    Every run tries these first, whatever Hypothesis draws."""
    out = []
    for message in valid:
        raw = encode(message)
        text_field = next((k for k, v in msgspec.to_builtins(message).items() if isinstance(v, str)), "zz")
        out += [
            raw[:-1] + b',"zz":' + _deep(5000, b"[", b"]") + b"}",
            raw[:-1] + b',"zz":' + _deep(5000, b'{"a":', b"}") + b"}",
            raw[:-1] + b',"zz":"\xff"}',
            raw[:-1] + b',"zz":{"\xed\xa0\x80":1}}',
            raw[:-1] + f',"{text_field}":"'.encode() + b'\xed\xa0\x80"}',
        ]
    return out


def with_examples(check: Any, *rows: tuple[Any, ...]) -> Any:
    for row in rows:
        check = example(*row)(check)
    return check


headers = st.none() | st.dictionaries(
    st.sampled_from([ORIGIN_HEADER, ERROR_HEADER, "Nats-Msg-Id"]) | st.text(max_size=10),
    st.text(max_size=20),
    max_size=3,
)


def ev_base(seq: int = 1, run_id: str = "r", task_id: str = "t") -> dict[str, Any]:
    return {"id": f"x/{seq}", "seq": seq, "timestamp": T0, "task_id": task_id, "run_id": run_id}


def sample_events(seq: int = 1, run_id: str = "r", task_id: str = "t") -> list[ev.Event]:
    b = ev_base(seq, run_id, task_id)
    stats = RunStats(duration=1.5, steps=2, tokens_prompt=10, tokens_completion=5, cost_usd=0.1, agent="a")
    return [
        ev.AnalysisStart(**b),
        ev.PlanReady(**b, data=ev.PlanData(plan={"steps": [{"title": "s"}]})),
        ev.ApprovalRequired(**b, data=ev.ApprovalRequiredData(plan={"steps": []}, timeout_s=30)),
        ev.Approved(**b, data=ev.DecisionData(feedback="ok")),
        ev.Rejected(**b, data=ev.DecisionData(feedback="no", stats=stats)),
        ev.Progress(**b, data=ev.ProgressData(step=1, total_steps=2, progress_percent=50, current_phase="x")),
        ev.RevisionRequested(**b, data=ev.RevisionData(version=1, round=1, feedback="again")),
        ev.ArtifactCreated(**b, data=ev.ArtifactData(name="a.txt", size=3, content_type="text/plain")),
        ev.Completion(**b, data=ev.CompletionData(results={"a": [1, 2]}, duration=1.5, stats=stats)),
        ev.Failure(**b, data=ev.FailureData(error="boom", stats=stats)),
        ev.Cancelled(**b, data=ev.CancelledData(reason="user")),
        ev.Timeout(**b, data=ev.TimeoutData(phase="approval")),
    ]


EVENTS = sample_events()
START = RunStart(run_id="r", task_id="t", run_number=1, task_name="x", task_config={"a": [1]})
CONTROL = RunControl(run_id="r", kind="approve", feedback="ok", plan_version=1)
CHECKPOINT = Checkpoint(phase="executing", seq=3, plan={"steps": []}, runner_id="x", holder=1)
INFO = RunnerInfo(instance="i1", version="1", agents=[AgentDescriptor(kind="scripted", active_runs=1)])

# --- fakes for the broker's side -----------------------------------------------------------------


class FakeMsg:
    """A received message that records how it was settled and what was answered."""

    def __init__(
        self, subject: str = "x", data: bytes = b"", headers: Any = None, reply: str = "", delivered: int = 1
    ) -> None:
        self.subject, self.data, self.headers, self.reply = subject, data, headers, reply
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=1))
        self.settled: list[str] = []
        self.responses: list[bytes] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")

    async def term(self) -> None:
        self.settled.append("term")

    async def in_progress(self) -> None:
        self.settled.append("in_progress")

    async def respond(self, data: bytes) -> None:
        self.responses.append(data)


class FakeNC:
    """A NATS client that records publishes; `replies` answer a scatter-gather (see Discovery)."""

    is_connected = True

    def __init__(self, replies: list[bytes] | None = None, answer: FakeMsg | None = None) -> None:
        self.published: list[tuple[str, bytes, Any]] = []
        self.replies = replies or []
        self.answer = answer
        self.cb: Any = None

    def new_inbox(self) -> str:
        return "_INBOX.fuzz"

    async def subscribe(self, subject: str, cb: Any = None, **_: Any) -> Any:
        self.cb = cb
        return SimpleNamespace(unsubscribe=_nothing)

    async def publish(self, subject: str, payload: bytes = b"", reply: str = "", headers: Any = None) -> None:
        self.published.append((subject, payload, headers))
        for data in self.replies:
            await self.cb(FakeMsg(reply, data))

    async def request(self, subject: str, payload: bytes, timeout: float = 1.0) -> FakeMsg:
        assert self.answer is not None
        return self.answer

    def dead(self) -> list[bytes]:
        return [p for s, p, _ in self.published if s == subjects.EVENTS_DEAD]


async def _nothing() -> None:
    return None


class FakeKV:
    """A run-state bucket holding `values`; records compare-and-set writes."""

    def __init__(self, values: dict[str, bytes] | None = None) -> None:
        self.values = values or {}
        self.writes: list[tuple[str, bytes]] = []

    async def get(self, key: str) -> Any:
        if key not in self.values:
            raise nats.js.errors.NotFoundError
        return SimpleNamespace(value=self.values[key], revision=7)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        self.writes.append((key, value))
        return 8

    async def create(self, key: str, value: bytes) -> int:
        self.writes.append((key, value))
        return 1


class FakeJS:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    async def publish(self, subject: str, payload: bytes, headers: Any = None) -> None:
        self.published.append((subject, payload))


# --- contracts: every decoder refuses with DecodeError, and takes a valid message ----------------

CONTRACT_CASES: list[tuple[Any, Any]] = [
    (RunStart, START),
    (RunWake, RunWake(run_id="r", task_id="t", reason="decision")),
    (RunControl, CONTROL),
    (RunnerHeartbeat, RunnerHeartbeat(runner_id="x", run_ids=["r"])),
    (RunCheckpointHead, RunCheckpointHead(phase="executing", seq=3, runner_id="x")),
    (ResourceDeleted, ResourceDeleted(task_id="t", run_id="r")),
    (Ping, Ping()),
    (Pong, Pong(service="s", instance="i", version="1")),
    (RunnerInfo, INFO),
    (ServiceError, ServiceError(404, "not found")),
    (MetricsQuery, MetricsQuery(task_id="t", since=T0, skip=1, limit=5)),
    (MetricsGet, MetricsGet(metric_id="m")),
    (MetricsSummaryQuery, MetricsSummaryQuery(run_id="r")),
    (Checkpoint, CHECKPOINT),
]


@pytest.mark.parametrize(("tp", "valid"), CONTRACT_CASES, ids=[tp.__name__ for tp, _ in CONTRACT_CASES])
def test_message_decoders_refuse_with_decode_error(tp: Any, valid: Any) -> None:
    decode = decoder(tp).decode
    assert decode(encode(valid)) == valid

    @FUZZ
    @given(payloads(valid))
    def check(data: bytes) -> None:
        try:
            assert isinstance(decode(data), tp)
        except msgspec.DecodeError:
            pass

    with_examples(check, *((d,) for d in nasty(valid)))()


def test_event_decoder_refuses_with_decode_error() -> None:
    for event in EVENTS:
        assert decode_event(encode(event)) == event
    bad = [
        b'{"event_type":"analysis_start","id":"x","seq":2147483648,"timestamp":"2025-01-01T00:00:00Z",'
        b'"task_id":"t","run_id":"r"}',  # past the INTEGER column
        encode(EVENTS[0])[:-1] + b',"zz":"\xff"}',  # not UTF-8 in a field the decoder skips
        encode(EVENTS[0])[:-1] + b',"zz":' + _deep(5000, b"[", b"]") + b"}",  # nested too deep
    ]
    for data in bad:
        with pytest.raises(msgspec.DecodeError):
            decode_event(data)

    @FUZZ
    @given(payloads(*EVENTS))
    def check(data: bytes) -> None:
        try:
            event = decode_event(data)
        except msgspec.DecodeError:
            return
        assert 0 <= event.seq <= SEQ_MAX
        data.decode()  # what is taken is text: stored and sent to clients as it came

    with_examples(check, *((d,) for d in nasty(*EVENTS)))()


# --- an event loop for the handlers ----------------------------------------------------------------

Run = Callable[[Awaitable[Any]], Any]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    """Runs a coroutine to its end: the handlers are async, Hypothesis calls each example in turn."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


# --- gateway -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_store(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayStore]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('gateway')}/gateway.db"
    run(run(engine_with_a_run(url, T0)).dispose())
    store = GatewayStore(url)
    run(store.open())
    yield store
    run(store.close())


class RetriedForever(BaseException):
    """The ingest went to retry a batch no retry can store: it would hold back every later event."""


async def _no_retry(_delay: float) -> None:
    raise RetriedForever


async def _snapshot(store: GatewayStore) -> tuple[Any, ...]:
    async with store.engine.connect() as conn:
        return (
            (await conn.execute(select(func.count()).select_from(run_events))).scalar(),
            (await conn.execute(select(artifacts.c.run_id, artifacts.c.name, artifacts.c.size))).all(),
            tuple((await conn.execute(select(runs).where(runs.c.id == "r"))).one()),
            tuple((await conn.execute(select(tasks).where(tasks.c.id == "t"))).one()),
        )


async def _fresh_run(store: GatewayStore) -> None:
    """Run "r" running again with no events: every event that decodes is stored and applied."""
    async with store.engine.begin() as conn:
        await conn.execute(run_events.delete())
        await conn.execute(artifacts.delete())
        await conn.execute(
            runs.update().where(runs.c.id == "r").values(status="running", last_seq=0, completed_at=None)
        )


async def _ingest_one(store: GatewayStore, data: bytes, subject: str = "events.run.t.r.x") -> tuple[Any, ...]:
    """Hand one message to a fresh ingest: the message, what was stored, the dead letters, and the
    database before and after."""
    nc = FakeNC()
    stored: list[Any] = []
    ingest = EventIngest(store, SimpleNamespace(nc=nc, kv=FakeKV()), stored.extend, origin="me")
    msg = FakeMsg(subject, data)
    before = await _snapshot(store)
    with mock.patch.object(ingest_module, "asyncio", SimpleNamespace(sleep=_no_retry)):
        await ingest._store_batch([msg])
    return msg, stored, nc.dead(), before, await _snapshot(store)


def test_ingest_stores_good_events_and_dead_letters_the_rest(run: Run, gateway_store: GatewayStore) -> None:
    good = encode(sample_events(seq=100)[5])  # progress
    msg, stored, dead, before, after = run(_ingest_one(gateway_store, good))
    assert msg.settled == ["ack"] and [raw for _, raw in stored] == [good] and not dead
    assert after[0] == before[0] + 1

    progress = msgspec.to_builtins(sample_events(seq=101)[5])
    approval = msgspec.to_builtins(sample_events(seq=102)[2])
    unstorable = [  # decoded, then refused where stored: terminated whole, nothing stored
        encode({**progress, "timestamp": "0001-01-01T00:00:00+01:00"}),
        encode({**approval, "data": {**approval["data"], "timeout_s": 1e308}}),
    ]
    for data in unstorable:
        msg, stored, dead, before, after = run(_ingest_one(gateway_store, data))
        assert msg.settled == ["term"] and dead == [data] and not stored, data
        assert after == before, data
    undecodable = [  # refused when decoded: acked, dead-lettered
        encode({**progress, "seq": 2**63}),
        encode(progress)[:-1] + b',"zz":"\xff"}',
        encode(progress)[:-1] + b',"zz":' + _deep(5000, b"[", b"]") + b"}",
    ]
    for data in undecodable:
        msg, stored, dead, before, after = run(_ingest_one(gateway_store, data))
        assert msg.settled == ["ack"] and dead == [data] and not stored and after == before, data
    # An artifact the index cannot take: the event is stored, the artifact not indexed.
    artifact = msgspec.to_builtins(sample_events(seq=103)[7])
    huge = encode({**artifact, "data": {**artifact["data"], "size": 2**63}})
    msg, stored, dead, before, after = run(_ingest_one(gateway_store, huge))
    assert msg.settled == ["ack"] and [raw for _, raw in stored] == [huge] and after[1] == before[1]


def test_ingest_never_raises_retries_forever_or_half_stores(run: Run, gateway_store: GatewayStore) -> None:
    seqs = st.integers(min_value=1, max_value=30)
    outcomes: Counter[tuple[str, str]] = Counter()
    valid = st.builds(lambda seq, i: sample_events(seq=seq)[i], seqs, st.integers(0, len(EVENTS) - 1))

    @FUZZ_DB
    @given(
        st.one_of(payloads(*EVENTS), typed_events(seqs), valid.flatmap(lambda e: payloads(e))), st.booleans()
    )
    def check(data: bytes, fresh: bool) -> None:
        if fresh:  # else on top of the events before: redeliveries and conflicting duplicates
            run(_fresh_run(gateway_store))
        msg, stored, dead, before, after = run(_ingest_one(gateway_store, data))
        assert msg.settled in (["ack"], ["nak"], ["term"]), msg.settled
        outcomes[(msg.settled[0], "stored" if stored else "dead-lettered" if dead else "not stored")] += 1
        if msg.settled == ["term"] or dead:
            assert after == before and not stored  # all of it or nothing
        for taken, raw in stored:
            assert raw == data and 0 <= taken.seq <= SEQ_MAX

    with_examples(check, *((d, True) for d in nasty(*EVENTS)))()
    assert (
        outcomes[("ack", "stored")]
        and outcomes[("ack", "dead-lettered")]
        and outcomes[("term", "dead-lettered")]
    )


def test_live_events_never_raise_past_the_hub(run: Run) -> None:
    hub = Hub(store=None, heartbeat_s=3600, queue_size=10**9, origin="me")
    client = hub.subscribe()
    good = encode(EVENTS[5])
    run(hub._on_live(FakeMsg("events.live.t.r", good)))
    assert [(f.run_id, f.seq, f.text) for f in client.queue] == [("r", 1, good.decode())]
    client.queue.clear()
    run(hub._on_live(FakeMsg("events.live.t.r", good, headers={ORIGIN_HEADER: "me"})))
    assert not client.queue  # its own: delivered already

    @FUZZ
    @given(payloads(*EVENTS), headers, st.text(max_size=30))
    def check(data: bytes, hdrs: Any, subject: str) -> None:
        client.queue.clear()
        run(hub._on_live(FakeMsg(subject, data, headers=hdrs)))
        for frame in client.queue:
            assert frame.text == data.decode() and 0 <= frame.seq <= SEQ_MAX

    with_examples(check, *((d, None, "events.live.t.r") for d in nasty(*EVENTS)))()


def test_discovery_answers_never_raise(run: Run) -> None:
    good = encode(INFO)

    @FUZZ
    @given(st.lists(payloads(INFO), max_size=3))
    def check(replies: list[bytes]) -> None:
        nc = FakeNC(replies=[*replies, good])
        discovery = Discovery(SimpleNamespace(nc=nc), window_s=0, miss_wait_s=0)
        answers = run(discovery.round(want="no-such-kind"))
        assert all(isinstance(a, RunnerInfo) for a in answers)
        assert INFO in answers and "i1" in discovery.seen

    with_examples(check, *(([d],) for d in nasty(INFO)))()


def test_error_answers_become_http_errors(run: Run) -> None:
    bus = Bus("nats://127.0.0.1:1", "fuzz", 1, 1.0)

    async def ask(data: bytes) -> HTTPException:
        bus.nc = FakeNC(answer=FakeMsg("_INBOX.x", data, headers={ERROR_HEADER: "1"}))
        with pytest.raises(HTTPException) as caught:
            await bus.request(subjects.METRICS_QUERY, MetricsQuery())
        return caught.value

    known = run(ask(encode(ServiceError(404, "metric m not found"))))
    assert (known.status_code, known.detail) == (404, "metric m not found")

    @FUZZ
    @given(payloads(ServiceError(404, "x")) | st.builds(ServiceError, st.integers(), st.text()).map(encode))
    def check(data: bytes) -> None:
        assert 400 <= run(ask(data)).status_code <= 599
        bus.nc = FakeNC(answer=FakeMsg("_INBOX.x", data))
        pong = run(bus.ping(subjects.METRICS_PING))
        assert pong is None or isinstance(pong, Pong)

    # 430 is in 400..599 but no HTTP status (found by FUZZ_RANDOM=1: it was a ValueError).
    unknown = (encode(ServiceError(430, "")),)
    with_examples(check, unknown, *((d,) for d in nasty(ServiceError(404, "x"))))()


def test_heartbeats_never_raise_past_the_reaper(run: Run) -> None:
    reaper = Reaper(store=None, bus=None, after_s=1, interval_s=1, instance="g")
    beat = encode(RunnerHeartbeat(runner_id="x", run_ids=["a"]))
    run(reaper._on_beat(FakeMsg(subjects.RUN_HEARTBEAT, beat)))
    assert set(reaper.seen) == {"a"}

    @FUZZ
    @given(payloads(RunnerHeartbeat(runner_id="x", run_ids=["a", "b"])))
    def check(data: bytes) -> None:
        run(reaper._on_beat(FakeMsg(subjects.RUN_HEARTBEAT, data)))
        assert all(isinstance(k, str) for k in reaper.seen)

    with_examples(check, *((d,) for d in nasty(RunnerHeartbeat(runner_id="x"))))()


def test_the_reaper_reads_any_checkpoint(run: Run) -> None:
    row = SimpleNamespace(
        id="r", task_id="t", last_seq=3, status="running", approval_deadline=None, started_at=T0
    )

    def reap(value: bytes) -> tuple[bool, FakeJS]:
        js = FakeJS()
        bus = SimpleNamespace(kv=FakeKV({subjects.state_key("r"): value}), js=js)
        reaper = Reaper(store=None, bus=bus, after_s=1, interval_s=1, instance="g")
        return run(reaper.reap(row)), js

    reaped, js = reap(encode(RunCheckpointHead(phase="executing", seq=9, runner_id="x")))
    assert reaped and decode_event(js.published[0][1]).seq == 10
    reaped, js = reap(encode(RunCheckpointHead(phase="executing", seq=2**40, runner_id="x")))
    assert reaped and decode_event(js.published[0][1]).seq == 4  # unreadable: after the stored log

    @FUZZ
    @given(payloads(RunCheckpointHead(phase="executing", seq=9, runner_id="x")))
    def check(data: bytes) -> None:
        _, js = reap(data)
        for _, payload in js.published:
            seq = msgspec.json.decode(payload)["seq"]
            assert seq > 3
            if seq <= SEQ_MAX:
                assert decode_event(payload).seq == seq  # what the reaper publishes, the ingest takes

    with_examples(check, *((d,) for d in nasty(RunCheckpointHead(runner_id="x"))))()


# --- runner --------------------------------------------------------------------------------------

WORK_SUBJECTS = st.sampled_from([subjects.run_start("scripted"), subjects.run_wake("scripted")]) | st.text(
    max_size=30
)


def test_work_messages_refuse_with_the_documented_errors() -> None:
    assert Work.of(FakeMsg(subjects.run_start("scripted"), encode(START))) == Work("r", "t", False)

    @FUZZ
    @given(payloads(START, RunWake(run_id="r", task_id="t", reason="cancel")), WORK_SUBJECTS)
    def check(data: bytes, subject: str) -> None:
        try:
            work = Work.of(FakeMsg(subject, data))
        except (msgspec.DecodeError, ValueError):
            return
        assert isinstance(work, Work)

    with_examples(check, *((d, subjects.run_start("scripted")) for d in nasty(START)))()


def _runner() -> Runner:
    runner = Runner(RunnerSettings(nats_url="nats://127.0.0.1:1", runner_id="fuzz"), plugins=False)
    runner.nc = FakeNC()
    return runner


def test_the_runner_takes_or_dead_letters_any_work_message(run: Run) -> None:
    runner = _runner()
    taken: list[Work] = []

    async def hold(msg: Any, work: Work, lane: Any) -> None:
        taken.append(work)

    runner._hold = hold
    lane = runner.puller.lanes[0]

    async def accept(subject: str, data: bytes) -> FakeMsg:
        taken.clear()
        runner.nc.published.clear()
        msg = FakeMsg(subject, data)
        await runner._accept(msg, lane)
        await asyncio.gather(*runner._tasks)
        return msg

    msg = run(accept(subjects.run_start("scripted"), encode(START)))
    assert taken == [Work("r", "t", False)] and not msg.settled

    @FUZZ
    @given(payloads(START, RunWake(run_id="r", task_id="t", reason="deadline")), WORK_SUBJECTS)
    def check(data: bytes, subject: str) -> None:
        msg = run(accept(subject, data))
        if taken:
            assert not msg.settled  # held: settled when the run ends
        else:  # dropped for good, kept for inspection
            assert msg.settled == ["term"] and runner.nc.dead() == [data]

    with_examples(check, *((d, subjects.run_start("scripted")) for d in nasty(START)))()


def test_controls_never_raise_past_the_runner(run: Run) -> None:
    runner = _runner()

    async def hold_r() -> RunRecord:
        loop = asyncio.get_running_loop()
        record = RunRecord(START, js=None, kv=None, obs=None, runner_id="fuzz")
        record._decision = loop.create_future()
        runner.held["r"] = Held(FakeMsg(), record, loop.create_future())
        return record

    endpoints = Endpoints(
        runner.nc, instance="fuzz", version="0.1.0", agents=["scripted"], pong=runner.pong, info=runner.info
    )

    async def control(msg: FakeMsg) -> None:
        await hold_r()
        await runner._on_control(msg)
        msg._client = runner.nc  # type: ignore[attr-defined]  # what a nats.micro Request replies through
        await endpoints.ping(micro.Request(msg))  # type: ignore[arg-type]
        await endpoints.info(micro.Request(msg))  # type: ignore[arg-type]

    run(control(FakeMsg(subjects.run_control("r"), encode(CONTROL))))
    record = runner.held["r"].execution
    assert record._decision is not None and record._decision.result() == CONTROL

    @FUZZ
    @given(payloads(CONTROL, RunControl(run_id="r", kind="cancel", reason="x")), headers)
    def check(data: bytes, hdrs: Any) -> None:
        msg = FakeMsg(subjects.run_control("r"), data, headers=hdrs, reply="_INBOX.r")
        runner.nc.published.clear()
        run(control(msg))
        [(to, pong, _), (to_info, info, _)] = runner.nc.published
        assert to == to_info == "_INBOX.r"
        assert isinstance(msgspec.json.decode(pong, type=Pong), Pong)
        assert isinstance(msgspec.json.decode(info, type=RunnerInfo), RunnerInfo)

    with_examples(check, *((d, None) for d in nasty(CONTROL)))()


def test_stored_run_state_never_raises_past_the_store(run: Run) -> None:
    def store_of(start: bytes, state: bytes, control: bytes) -> RunStore:
        values = {
            subjects.start_key("r"): start,
            subjects.state_key("r"): state,
            subjects.cancel_key("r"): control,
            subjects.decision_key("r"): control,
        }
        return RunStore(FakeKV(values), "r")

    good = run(store_of(encode(START), encode(CHECKPOINT), encode(CONTROL)).load_all())
    assert (good.start, good.checkpoint) == (START, CHECKPOINT)

    async def load(store: RunStore) -> None:
        try:
            assert isinstance(await store.load_all(), Stored)
        except UnusableRunError:
            pass
        stored = await store.stored_cancel()
        assert stored is None or isinstance(stored, RunControl)

    @FUZZ
    @given(payloads(START), payloads(CHECKPOINT), payloads(CONTROL, RunControl(run_id="r", kind="cancel")))
    def check(start: bytes, state: bytes, control: bytes) -> None:
        run(load(store_of(start, state, control)))

    good = (encode(START), encode(CHECKPOINT), encode(CONTROL))
    rows = [(d, good[1], good[2]) for d in nasty(START)] + [(good[0], d, good[2]) for d in nasty(CHECKPOINT)]
    with_examples(check, *rows, *((good[0], good[1], d) for d in nasty(CONTROL)))()


# --- metrics -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_store(run: Run, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStore]:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('metrics')}/metrics.db")
    run(migrate(engine, METRICS_MIGRATIONS, METRICS_VERSION_TABLE))
    yield MetricsStore(engine)
    run(engine.dispose())


metric_queries = st.builds(
    MetricsQuery,
    task_id=st.none() | st.text(max_size=10),
    run_id=st.none() | st.text(max_size=10),
    name=st.none() | st.text(max_size=10),
    since=st.none() | dates,
    until=st.none() | dates,
    skip=st.integers() | st.sampled_from([2**63 - 1, 2**63, 2**64]),
    limit=st.integers(),
).map(encode)


def test_metrics_requests_are_answered_never_raised(run: Run, metrics_store: MetricsStore) -> None:
    nc = FakeNC()
    handlers = RequestHandlers(nc, metrics_store, "fuzz")
    routes: dict[str, tuple[Any, Any]] = {
        subjects.METRICS_QUERY: (handlers.query, MetricsPage),
        subjects.METRICS_GET: (handlers.get, MetricOut),
        subjects.METRICS_RUN_SUMMARY: (handlers.run_summary, MetricsSummary),
        subjects.METRICS_TASK_SUMMARY: (handlers.task_summary, MetricsSummary),
        subjects.METRICS_PING: (handlers.ping, Pong),
        subjects.METRICS_REPORT: (handlers.report, MetricsReport),
        subjects.METRICS_SERIES: (handlers.series, MetricsSeries),
        subjects.METRICS_CREATE: (handlers.create, MetricOut),
    }

    def answer(subject: str, data: bytes) -> tuple[Any, ServiceError | None]:
        nc.published.clear()
        handler, tp = routes[subject]
        msg = FakeMsg(subject, data, reply="_INBOX.m")
        msg._client = nc  # type: ignore[attr-defined]  # what a nats.micro Request replies through
        run(handlers._answer(handler, micro.Request(msg)))  # type: ignore[arg-type]
        [(to, reply, hdrs)] = nc.published
        assert to == "_INBOX.m"
        if hdrs and hdrs.get(ERROR_HEADER):
            return None, msgspec.json.decode(reply, type=ServiceError)
        return msgspec.json.decode(reply, type=tp), None

    page, _ = answer(subjects.METRICS_QUERY, encode(MetricsQuery(limit=5)))
    assert isinstance(page, MetricsPage) and page.limit == 5
    for query in (  # the gateway forwards its query parameters: out of range is the client's mistake
        MetricsQuery(skip=2**64),
        MetricsQuery(since=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))),
        MetricsQuery(until=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2)))),
    ):
        _, error = answer(subjects.METRICS_QUERY, encode(query))
        assert error is not None and error.status_code == 400, query

    requests = payloads(
        MetricsQuery(task_id="t", skip=1),
        MetricsGet(metric_id="m"),
        MetricsSummaryQuery(run_id="r"),
        MetricsReportQuery(agent="a"),
        MetricsSeriesQuery(name="duration", bucket="5m"),
        MetricCreate(task_id="t", run_id="r", agent="a", name="x.y", value=1.5),
    )

    @FUZZ_DB
    @given(st.sampled_from(list(routes)), requests | metric_queries)
    def check(subject: str, data: bytes) -> None:
        _, error = answer(subject, data)
        assert error is None or 400 <= error.status_code < 500, error  # a 503: it raised

    rows = [(subjects.METRICS_QUERY, d) for d in nasty(MetricsQuery())]
    rows += [(subjects.METRICS_GET, d) for d in nasty(MetricsGet(metric_id="m"))]
    with_examples(check, *rows)()


def test_metrics_events_are_stored_or_dead_lettered(run: Run, metrics_store: MetricsStore) -> None:
    nc = FakeNC()
    consumer = EventsConsumer(nc, None, metrics_store)
    completion = msgspec.to_builtins(sample_events(run_id="good", task_id="mt")[8])
    good = FakeMsg("events.run.mt.good.completion", encode(completion))
    # No float holds it: the run is still recorded, without the value (METRIC_VALUE_MAX).
    too_big = {"duration": 1, "results": None, "stats": {"steps": 10**400}}
    huge = FakeMsg("x", encode({**completion, "run_id": "p1", "data": too_big}))
    poison = FakeMsg("x", encode({**completion, "run_id": "p2", "timestamp": "0001-01-01T00:00:00+01:00"}))
    run(consumer._handle([huge, poison, good]))
    assert [m.settled for m in [huge, poison, good]] == [["ack"]] * 3
    assert nc.dead() == [poison.data]
    assert run(metrics_store.page(MetricsQuery(run_id="good"))).total == 5  # duration, steps, tokens, cost
    assert [m.name for m in run(metrics_store.page(MetricsQuery(run_id="p1"))).items] == ["duration"]

    terminal = [e for e in EVENTS if e.__struct_config__.tag in ev.TERMINAL_EVENT_TYPES]

    @FUZZ_DB
    @given(st.lists(payloads(*terminal, EVENTS[0]) | typed_events(st.integers(0, 5)), min_size=1, max_size=3))
    def check(batch: list[bytes]) -> None:
        msgs = [FakeMsg("events.run.t.r.x", data) for data in batch]
        run(consumer._handle(msgs))
        assert [m.settled for m in msgs] == [["ack"]] * len(msgs)  # a nak would come back forever

    with_examples(check, *(([d],) for d in nasty(terminal[0])))()


def test_metrics_deletions_never_raise(run: Run, metrics_store: MetricsStore) -> None:
    nc = FakeNC()
    consumer = LifecycleConsumer(nc, None, metrics_store)
    good = FakeMsg(subjects.RUN_DELETED, encode(ResourceDeleted(task_id="t", run_id="gone")))
    run(consumer._on_msg(good))
    assert good.settled == ["ack"] and not nc.published

    @FUZZ_DB
    @given(
        payloads(ResourceDeleted(task_id="t", run_id="r"), ResourceDeleted(task_id="t")),
        st.sampled_from([subjects.RUN_DELETED, subjects.TASK_DELETED]) | st.text(max_size=20),
    )
    def check(data: bytes, subject: str) -> None:
        msg = FakeMsg(subject, data)
        run(consumer._on_msg(msg))
        assert msg.settled == ["ack"]

    with_examples(
        check, *((d, subjects.RUN_DELETED) for d in nasty(ResourceDeleted(task_id="t", run_id="r")))
    )()
