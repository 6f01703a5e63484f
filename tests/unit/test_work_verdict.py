"""Which work messages a runner acts on: the decision table of `work.verdict`, without a broker."""

from __future__ import annotations

import pytest

from agentbus.contracts import RunStart
from agentbus.runner.store import Checkpoint, Stored
from agentbus.runner.work import Work, verdict

START = RunStart(run_id="r1", task_id="t1", run_number=1, task_name="x")


def stored(start: RunStart | None = START, cp: Checkpoint | None = None) -> Stored:
    return Stored(start, None, cp, None, None)


@pytest.mark.parametrize(
    ("work", "state", "expected"),
    [
        # a new run: its start (or a cancel's wake) starts it
        (Work("r1", "t1", wake=False), stored(), None),
        (Work("r1", "t1", wake=True), stored(), None),
        # no record: never created by a gateway, or deleted
        (Work("r1", "t1", wake=False), stored(start=None), "no stored record"),
        (Work("r1", "t1", wake=True), stored(start=None, cp=Checkpoint(seq=3, holder=7)), "no stored record"),
        # a run from before records were stored: its checkpoint vouches for it
        (Work("r1", "t1", wake=False), stored(start=None, cp=Checkpoint(seq=3)), None),
        # the message names another task than the record
        (Work("r1", "t2", wake=False), stored(), "names task t2"),
        # ended: obsolete
        (Work("r1", "t1", wake=True), stored(cp=Checkpoint(phase="finished", seq=5, holder=7)), "stale"),
        # parked: any message may claim it
        (
            Work("r1", "t1", wake=True),
            stored(cp=Checkpoint(phase="awaiting_approval", holder=7, parked=True)),
            None,
        ),
        # held by this very message (its holder died): resume
        (Work("r1", "t1", wake=False), stored(cp=Checkpoint(phase="executing", holder=9)), None),
        # held by another message's holder: stale
        (Work("r1", "t1", wake=True), stored(cp=Checkpoint(phase="executing", holder=7)), "stale"),
    ],
)
def test_verdict(work: Work, state: Stored, expected: str | None) -> None:
    why = verdict(work, state, token=9)
    if expected is None:
        assert why is None
    else:
        assert why is not None and expected in why
