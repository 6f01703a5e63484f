"""schemathesis hooks for tests/e2e/test_schemathesis.py (loaded by `st run` through
SCHEMATHESIS_HOOKS; the ids it substitutes come in AGENTBUS_ST_KNOWN as JSON).

Each hook makes generated requests mean what the schema says they mean, without weakening a check:
- path parameters sometimes name stored things (a task, a finished run with an artifact, a metric,
  an approval, the `scripted` agent), so the coverage and fuzzing phases reach past the 404 as well;
- a schema-valid `cursor` is one the gateway handed out (cursors are opaque: the schema can only say
  "a string"), and it goes without `skip` ("pass either skip or cursor");
- an integral float in a body's integer field is sent as an integer: JSON Schema counts 5.0 as an
  integer, the gateway (docs/api.md: a value of the wrong type is a 400) does not, and that 400 is tested
  in tests/e2e/test_hostile_input.py;
- a body's `date-time` field holds an RFC 3339 time in the future: schemathesis's coverage phase
  ignores `format` and sends `""`, and a key's `expires_at` in the past is refused (400) for a reason
  no schema can say; both refusals are tested in tests/integration/test_identities.py.
"""

from __future__ import annotations

import json
import os
import zlib
from datetime import UTC, datetime
from typing import Any

import schemathesis
from schemathesis.generation.meta import TestPhase

KNOWN: dict[str, Any] = json.loads(os.environ.get("AGENTBUS_ST_KNOWN", "{}"))
# Path parameter -> the stored thing it names (the artifact name only with the run that has it).
IDS = {
    "task_id": KNOWN.get("task_id"),
    "run_id": KNOWN.get("run_id"),
    "metric_id": KNOWN.get("metric_id"),
    "approval_id": KNOWN.get("approval_id"),
    "webhook_id": KNOWN.get("webhook_id"),
    "kind": "scripted",
}
CURSORS = {
    "/api/tasks": KNOWN.get("task_cursor"),
    "/api/runs": KNOWN.get("run_cursor"),
    "/api/approvals": KNOWN.get("approval_cursor"),
    "/api/keys": KNOWN.get("key_cursor"),
    "/api/audit": KNOWN.get("audit_cursor"),
    "/api/webhooks": KNOWN.get("webhook_cursor"),
    "/api/webhooks/{webhook_id}/deliveries": KNOWN.get("delivery_cursor"),
}
BIG = 2**63 - 1


def _half(value: Any) -> bool:
    """A fixed half of the generated values (so a case always maps the same way)."""
    return zlib.crc32(repr(value).encode()) % 2 == 0


def _known_ids(case: Any) -> None:
    params = case.path_parameters
    # Not in the stateful phase: its ids come from the responses it follows (and its checks, like
    # use_after_free, reason about exactly those). Not on DELETE: the stored things must stay.
    if not params or case.meta is None or case.meta.phase.name == TestPhase.STATEFUL:
        return
    if case.operation.method.upper() == "DELETE" or not _half(params):
        return
    for name in params:
        if IDS.get(name):
            params[name] = IDS[name]
    if "name" in params and params.get("run_id") == IDS["run_id"]:
        params["name"] = KNOWN.get("artifact", params["name"])


def _cursor(case: Any) -> None:
    query = case.query
    real = CURSORS.get(case.operation.path.rstrip("/"))
    if not query or not real:
        return
    cursor = query.get("cursor")
    if not (isinstance(cursor, str) and 1 <= len(cursor) <= 200):
        return  # absent, or itself the schema violation of a negative case: left as it is
    query["cursor"] = real
    skip = query.get("skip")
    if isinstance(skip, str) and skip.isdigit():
        skip = int(skip)
    if isinstance(skip, int) and not isinstance(skip, bool) and 0 <= skip <= BIG:
        query["skip"] = 0


def _integers(value: Any, schema: Any) -> Any:
    """`value` with every integral float that `schema` declares an integer made an int."""
    if not isinstance(schema, dict):
        return value
    for branch in schema.get("anyOf", ()):
        if isinstance(branch, dict) and _fits(value, branch):
            return _integers(value, branch)
    kind = schema.get("type")
    if kind == "integer" and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _integers(v, props[k]) if k in props else v for k, v in value.items()}
    return value


FUTURE = "2100-01-01T00:00:00Z"


def _date_times(value: Any, schema: Any) -> Any:
    """`value` with every `date-time` string of `schema` that is not an RFC 3339 time in the future
    made one."""
    if not isinstance(schema, dict) or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, prop in (schema.get("properties") or {}).items():
        branches = [prop, *(prop.get("anyOf", ()) if isinstance(prop, dict) else ())]
        if any(isinstance(b, dict) and b.get("format") == "date-time" for b in branches):
            if isinstance(out.get(key), str) and not _future(out[key]):
                out[key] = FUTURE
    return out


def _future(text: str) -> bool:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None and moment > datetime.now(UTC)


def _fits(value: Any, schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    return (kind == "object" and isinstance(value, dict)) or (kind == "integer" and isinstance(value, float))


def _body_schema(case: Any) -> Any:
    body = case.operation.definition.raw.get("requestBody") or {}
    media = (body.get("content") or {}).get(case.media_type or "application/json") or {}
    return media.get("schema")


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    _known_ids(case)
    _cursor(case)
    schema = _body_schema(case)
    if schema is not None and isinstance(case.body, (dict, float)):
        case.body = _date_times(_integers(case.body, schema), schema)
    return case
