"""What the streams have done, as plain counters (read by the Prometheus exposition at scrape time).

One `StreamStats` per hub; the transports add to it. Plain integers: the fan-out's hot path pays
an addition, no lock and no label lookup.
"""

from __future__ import annotations


class StreamStats:
    __slots__ = ("cut_off", "frames", "open")

    def __init__(self) -> None:
        self.open = {"websocket": 0, "sse": 0}  # streams open now
        self.frames = {"websocket": 0, "sse": 0}  # frames sent (events and heartbeats)
        # Clients closed by the gateway, by why (revoked: the credential no longer proves an identity).
        self.cut_off = {"too_slow": 0, "shutdown": 0, "revoked": 0}
