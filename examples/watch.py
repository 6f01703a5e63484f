"""Watch a run's events over the WebSocket, one line per event.

    python examples/watch.py RUN_ID [--since N] [--until EVENT_TYPE] [--url ws://127.0.0.1:8000]

It exits after a terminal event (completion, failure, rejected, cancelled,
timeout) or after the event named by --until.
"""

import argparse
import asyncio
import json
import os

from websockets.asyncio.client import connect

TERMINAL = {"completion", "failure", "rejected", "cancelled", "timeout"}


async def watch(url: str, run_id: str, since: int, until: str | None) -> None:
    headers = {}
    if os.environ.get("AGENTBUS_API_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['AGENTBUS_API_TOKEN']}"
    async with connect(f"{url}/ws/runs/{run_id}?since={since}", additional_headers=headers) as ws:
        async for frame in ws:
            event = json.loads(frame)
            if event["event_type"] == "heartbeat":
                continue
            print(event["seq"], event["event_type"], json.dumps(event["data"]), flush=True)
            if event["event_type"] in TERMINAL or event["event_type"] == until:
                return


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_id")
    parser.add_argument("--since", type=int, default=0, help="replay stored events with seq > since first")
    parser.add_argument("--until", help="stop after this event type")
    parser.add_argument("--url", default=os.environ.get("AGENTBUS_WS", "ws://127.0.0.1:8000"))
    args = parser.parse_args()
    asyncio.run(watch(args.url, args.run_id, args.since, args.until))


if __name__ == "__main__":
    main()
