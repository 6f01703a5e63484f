"""Watch a run's events, one line per event: a thin use of the Python client (`agentbus.client`).

    python examples/watch.py RUN_ID [--since N] [--until EVENT_TYPE] [--url http://127.0.0.1:8000]

The gateway: --url, else AGENTBUS_URL, else http://127.0.0.1:$GATEWAY_PORT (8000 by default);
AGENTBUS_TOKEN (or AGENTBUS_API_TOKEN) when authentication is on. A dropped connection is resumed
without losing or repeating an event. It exits after a terminal event or the one named by
--until: 0 when the run completed (or --until was reached), 1 when it failed or on an error, 3 when
it was rejected, cancelled or timed out, 4 for an unknown run (or a refused credential).
"""

import argparse
import json
import os
import sys

import msgspec

from agentbus.client import AgentbusError, ApiError, Client, event_type

TERMINAL_EXIT = {"completion": 0, "failure": 1, "rejected": 3, "cancelled": 3, "timeout": 3}


def default_url() -> str:
    if os.environ.get("AGENTBUS_URL"):
        return os.environ["AGENTBUS_URL"]
    if os.environ.get("AGENTBUS_WS"):  # older name: the WebSocket base URL
        return "http" + os.environ["AGENTBUS_WS"].removeprefix("ws")
    return f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT') or 8000}"


def watch(api: Client, run_id: str, since: int, until: str | None) -> int:
    for event in api.watch(run_id, since=since):
        kind = event_type(event)
        data = msgspec.to_builtins(getattr(event, "data", {}))
        print(event.seq, kind, json.dumps(data), flush=True)
        if kind == until:
            return 0
        if kind in TERMINAL_EXIT:
            return TERMINAL_EXIT[kind]
    # Watched from past its last event: the run had ended before.
    return {"completed": 0, "failed": 1}.get(api.get_run(run_id).status, 3)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_id")
    parser.add_argument("--since", type=int, default=0, help="replay stored events with seq > since first")
    parser.add_argument("--until", help="stop after this event type")
    parser.add_argument("--url", default=None, help="the gateway (default: see above)")
    args = parser.parse_args()
    token = os.environ.get("AGENTBUS_TOKEN") or os.environ.get("AGENTBUS_API_TOKEN")
    try:
        with Client(args.url or default_url(), token) as api:
            return watch(api, args.run_id, args.since, args.until)
    except ApiError as exc:
        print(f"error: {exc.detail} (HTTP {exc.status_code})", file=sys.stderr)
        return 4 if exc.status_code in (401, 403, 404) else 1
    except AgentbusError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
