"""Work messages: what one names, whether to act on it, and how it is dropped.

A `run.start.<kind>` or `run.wake.<kind>` message only names a run (`Work`). The runner acts on the
run's stored record and checkpoint, and only when the message may act on it (`verdict`); a message
that names something that cannot be run is dead-lettered, and a run whose stored state does not
decode is ended (`end_unusable`).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import Any, NamedTuple

from nats.aio.msg import Msg

from agentbus.contracts import RunCheckpointHead, RunStart, RunWake, encode, subjects
from agentbus.contracts.codec import decoder
from agentbus.contracts.events import Failure, FailureData, RunStats
from agentbus.runner.store import RunStore, Stored, UnusableRunError

log = logging.getLogger(__name__)

# Ids become subject tokens and KV keys: keep to characters valid in both (\Z: no final newline).
_ID = re.compile(r"^[A-Za-z0-9_=-]{1,200}\Z")
start_decoder = decoder(RunStart)
_wake_decoder = decoder(RunWake)


class Work(NamedTuple):
    """What a work message names: a run to start (`run.start.<kind>`) or to wake (`run.wake.<kind>`)."""

    run_id: str
    task_id: str
    wake: bool

    @classmethod
    def of(cls, msg: Msg) -> Work:
        """Raises msgspec.DecodeError, msgspec.ValidationError or ValueError for a bad message."""
        wake = msg.subject.startswith(subjects.RUN_WAKE_KIND_PREFIX + ".")
        named = (_wake_decoder if wake else start_decoder).decode(msg.data)
        if not (_ID.match(named.run_id) and _ID.match(named.task_id)):
            raise ValueError("run_id and task_id must match [A-Za-z0-9_=-]{1,200}")
        return cls(named.run_id, named.task_id, wake)


def verdict(work: Work, stored: Stored, token: int) -> str | None:
    """Why this work message must not be acted on, or None when it must.

    A reason starting with "stale" means the message is simply obsolete (acked); any other means it
    names something that cannot be run (dead-lettered).
    """
    cp = stored.checkpoint
    if stored.start is None:
        # Runs queued before records were stored have a checkpoint once started; a run with
        # neither was never created by a gateway (or was deleted since).
        if cp is None or work.wake:
            return "no stored record of this run (never created, or deleted)"
    elif stored.start.task_id != work.task_id:
        return f"the message names task {work.task_id}, its record task {stored.start.task_id}"
    if cp is None:
        return None  # not started yet: a start, or a cancel's wake, starts it
    if cp.phase == "finished":
        return "stale: the run has ended"
    if cp.parked or cp.holder in (0, token):
        return None  # woken, or its holder is gone and this is the holder's message again
    return f"stale: held by the holder of message {cp.holder}"


async def settle_quietly(ack: Awaitable[Any], run_id: str) -> None:
    """Ack, nak or term a message; a failure only logs (JetStream redelivers it after ack_wait)."""
    try:
        await ack
    except Exception as exc:
        log.warning("could not settle a message of run %s: %r", run_id, exc)


async def dead_letter(nc: Any, msg: Msg, error: str) -> None:
    """Terminate a work message (never redelivered) and publish it on `events.dead` with why."""
    error = error.replace("\r", " ").replace("\n", " ")[:500]
    try:
        await msg.term()
        await nc.publish(subjects.EVENTS_DEAD, msg.data, headers={"Agentbus-Error": error})
    except Exception as bus_exc:  # not terminated: it comes back after ack_wait and is dropped then
        log.warning("could not terminate the bad message: %r", bus_exc)


async def end_unusable(js: Any, store: RunStore, work: Work, exc: UnusableRunError, runner_id: str) -> None:
    """End a run whose stored state does not decode: fence its checkpoint (compare-and-set on the
    revision read), then publish a `failure` with the next seq, as the gateway's reaper does."""
    cp = exc.checkpoint
    if cp is not None and cp.phase == "finished":
        return
    if cp is not None:
        seq = cp.seq + 1
    else:  # the checkpoint is what is unreadable: the run's log in the stream says how far it got
        info = await js.stream_info(
            subjects.EVENTS_STREAM, subjects_filter=subjects.run_event("*", work.run_id, ">")
        )
        seq = sum((info.state.subjects or {}).values()) + 1
    head = RunCheckpointHead(phase="finished", seq=seq, runner_id=runner_id)
    if not await store.fence(encode(head)):
        return  # written meanwhile: whoever wrote it acts on the run
    error = f"unusable stored state: {exc}"
    event = Failure(
        id=f"{runner_id}/{uuid.uuid4().hex}",  # the fence's runner_id first, as every event of a holder
        seq=seq,
        timestamp=datetime.now(UTC),
        task_id=work.task_id,
        run_id=work.run_id,
        message=f"Run failed: {error}",
        data=FailureData(error=error, stats=RunStats(duration=0.0)),
    )
    await js.publish(
        subjects.run_event(work.task_id, work.run_id, "failure"),
        encode(event),
        headers={"Nats-Msg-Id": subjects.event_msg_id(work.run_id, seq)},
    )
