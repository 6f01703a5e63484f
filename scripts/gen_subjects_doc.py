"""Write docs/subjects.md from agentbus.contracts.subjects (a unit test checks they agree)."""

from pathlib import Path

from agentbus.contracts import subjects

HEADER = """# NATS subjects

Generated from `libs/contracts/src/agentbus/contracts/subjects.py` by
`python scripts/gen_subjects_doc.py`; `tests/unit/test_contracts.py` fails when
the two disagree. Payload types are msgspec structs in `agentbus.contracts`;
every payload carries a version field `v` and is decoded strictly (a payload
that does not decode is logged with its subject and dropped, or published to
`events.dead`).

| subject | kind | payload | publisher | consumers |
|---|---|---|---|---|
"""

STREAMS = f"""
## JetStream assets

| asset | name | what |
|---|---|---|
| stream | `{subjects.RUN_COMMANDS_STREAM}` | work queue of `run.start.<agent_kind>`; the runners serving a kind pull from its shared durable consumer `{subjects.RUNNER_CONSUMER}-<agent_kind>` (dots in a kind become `_` plus a short hash) |
| stream | `{subjects.EVENTS_STREAM}` | every run event (`events.run.>`), published with message id `<run_id>:<seq>` so a retry is deduplicated |
| stream | `{subjects.LIFECYCLE_STREAM}` | `task.deleted`, `run.deleted` |
| key-value | `{subjects.RUN_STATE_BUCKET}` | `<run_id>.start` (the run as the gateway created it: runners act only on runs stored here), `<run_id>.state` (runner checkpoint), `<run_id>.decision` and `<run_id>.cancel` (stored decisions) |
| object store | `{subjects.ARTIFACTS_BUCKET}` | artifact bytes under `<run_id>/<name>` |

## nats.micro services

`$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (to every service, or `.<name>`, or `.<name>.<id>`) list
each copy of these services with its endpoints and count each endpoint's requests, errors and
processing time (`nats micro ls`, `nats micro info <name>`, `nats micro stats <name>`).

| service | endpoints | queue groups |
|---|---|---|
| `{subjects.RUNNER_SERVICE}` | `ping` (`{subjects.RUN_PING}`), `info` (`{subjects.RUN_INFO}`) | `runner` for `ping` (one runner answers); for `info` one per runner, `runner-<service id>`, so every runner answers |
| `agentbus-metrics` | its request/reply subjects above (`run.metrics.*`, `task.metrics.summary`) | `metrics` |
"""


def render() -> str:
    rows = "".join(
        f"| `{s.subject}` | {s.kind} | {s.payload} | {s.publisher} | {s.consumers} |\n"
        for s in subjects.SUBJECTS
    )
    return HEADER + rows + STREAMS


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "docs" / "subjects.md"
    out.write_text(render())
    print(f"wrote {out}")
