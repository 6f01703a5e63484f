"""Publish run events the way a runner does: JetStream, one awaited ack each, `Nats-Msg-Id` run_id:seq.

    python -m bench.publish NATS_URL --task T --run R --first-seq N --rate E --duration S

Each event's `timestamp` is taken just before it is published, so a subscriber's latency
covers runner publish -> NATS -> gateway (stored) -> client. Events are due at fixed times
(open loop); if an ack is late, the next events go out at once to catch up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

from agentbus.contracts import Progress, encode, subjects
from agentbus.contracts.events import ProgressData


def inbox_of(url: str) -> str:
    """The inbox prefix of the user named in `url` (a secured broker lets a user read only its
    own, agentbus.common.broker), or the default one."""
    from agentbus.common.broker import inbox_prefix

    user = urlsplit(url).username
    return inbox_prefix(user) if user else "_INBOX"


async def publish(url: str, task_id: str, run_id: str, first_seq: int, rate: float, duration: float) -> dict:
    import nats

    nc = await nats.connect(url, inbox_prefix=inbox_of(url))
    js = nc.jetstream()
    subject = subjects.run_event(task_id, run_id, "progress")
    total = int(rate * duration)
    interval = 1.0 / rate
    start = time.perf_counter() + 0.05
    late = 0
    for i in range(total):
        due = start + i * interval
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.005:
            late += 1
        seq = first_seq + i
        event = Progress(
            id=uuid.uuid4().hex,
            seq=seq,
            timestamp=datetime.now(UTC),
            task_id=task_id,
            run_id=run_id,
            message=f"bench event {seq}",
            data=ProgressData(
                step=i + 1,
                total_steps=total,
                progress_percent=round(100 * (i + 1) / total, 1),
                current_phase="bench",
            ),
        )
        await js.publish(subject, encode(event), headers={"Nats-Msg-Id": subjects.event_msg_id(run_id, seq)})
    elapsed = time.perf_counter() - start
    await nc.close()
    return {"published": total, "rate": total / elapsed, "late": late, "last_seq": first_seq + total - 1}


def main(argv: list[str] | None = None) -> None:
    import uvloop

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--task", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--first-seq", type=int, required=True)
    p.add_argument("--rate", type=float, default=500)
    p.add_argument("--duration", type=float, default=5)
    a = p.parse_args(argv)
    result = uvloop.run(publish(a.url, a.task, a.run, a.first_seq, a.rate, a.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
