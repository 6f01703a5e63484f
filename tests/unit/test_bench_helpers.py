"""The benchmark harness's pure helpers (bench/): parsing, statistics, the report. No timing here."""

from __future__ import annotations

import argparse
import json
import math
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import auth
from bench.httpload import build_request, parse_response, served
from bench.httpload import main as httpload_main
from bench.report import BEGIN, END, write
from bench.stats import (
    Row,
    compare_cells,
    compare_table,
    fmt,
    median_of,
    percentile,
    plain_table,
    ratio,
    summary,
    table,
)
from bench.streams import StreamClient, close_frame, event_age_s, head_decoder, parse_frames
from bench.webload import parse_wrk, wrk_script
from bench.wsload import check_refused


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0], 99) == 3.0
    assert math.isnan(percentile([], 50))
    s = summary([0.001, 0.002, 0.003])
    assert s["n"] == 3 and s["p50_ms"] == 2.0 and s["max_ms"] == 3.0


def test_median_of_runs_skips_missing() -> None:
    assert median_of([{"rps": 1.0}, {"rps": 3.0}, {"rps": 2.0}, {}], "rps") == 2.0
    assert math.isnan(median_of([], "rps"))
    assert fmt(2534.4, "req/s") == "2,534 req/s" and fmt(1.234, "ms") == "1.23 ms" and fmt(math.nan) == "n/a"


def test_http_request_and_pipelined_responses() -> None:
    raw = build_request("POST", "h:1", "/api/tasks", b'{"name":"x"}')
    assert raw.startswith(b"POST /api/tasks HTTP/1.1\r\nHost: h:1\r\n") and raw.endswith(
        b'\r\n\r\n{"name":"x"}'
    )
    buf = bytearray(
        b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 2"
    )
    status, body, used = parse_response(buf)  # type: ignore[misc]
    assert (status, body) == (201, b"{}")
    del buf[:used]
    status, body, used = parse_response(buf)  # type: ignore[misc]
    assert (status, body) == (204, b"")
    del buf[:used]
    assert parse_response(buf) is None


def test_websocket_frames_parse_whole_frames_only() -> None:
    small = bytes([0x81, 5]) + b"hello"
    medium = bytes([0x81, 126]) + (300).to_bytes(2, "big") + b"x" * 300
    close = bytes([0x88, 2]) + (1013).to_bytes(2, "big")
    buf = bytearray(small + medium + close + bytes([0x81, 10]) + b"part")
    frames, used = parse_frames(buf)
    assert [(op, len(p)) for op, p in frames] == [(1, 5), (1, 300), (8, 2)]
    assert frames[2][1] == (1013).to_bytes(2, "big")
    assert used == len(small) + len(medium) + len(close)
    masked = close_frame(1000)
    assert masked[0] == 0x88 and masked[1] == 0x82 and len(masked) == 8


def test_report_keeps_the_text_around_the_generated_block(tmp_path: Path) -> None:
    rows = [
        Row("GET /api/tasks/{id} throughput", "sqlite", "3,000 req/s", ">= 2,500 req/s", True, ["1", "2"])
    ]
    assert "| GET /api/tasks/{id} throughput | sqlite | 3,000 req/s |" in table(rows)
    assert "3,000 req/s" in plain_table(rows)
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nbefore\n\n{BEGIN}\nold\n{END}\n\nafter: analysis\n")
    write(doc, rows, "python -m bench", 60)
    text = doc.read_text()
    assert "before" in text and "after: analysis" in text and "old" not in text
    assert "- command: `python -m bench`" in text and "3,000 req/s" in text


def test_event_age_is_exact_to_the_microsecond() -> None:
    ts = datetime(2026, 12, 1, 23, 17, 55, 634717, tzinfo=UTC)
    now_ns = int((ts - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 10**9 + 634717 * 1000
    assert event_age_s(ts, now_ns) == 0.0
    assert event_age_s(ts, now_ns + 1_500_999) == 0.0015  # 1.500999 ms: counted in whole microseconds
    assert event_age_s(ts.replace(tzinfo=None), now_ns + 4_000) == 0.000004  # naive = UTC
    other_zone = ts.astimezone(timezone(timedelta(hours=2)))
    assert event_age_s(other_zone, now_ns + 2_000_000) == 0.002
    # As the runner writes it and the stream's decoder reads it:
    head = head_decoder.decode(b'{"event_type":"progress","timestamp":"2026-12-01T23:17:55.634717Z"}')
    assert head.timestamp == ts and event_age_s(head.timestamp, now_ns + 3_800_000) == 0.0038


def test_compare_table_has_both_medians_and_the_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5 and math.isnan(ratio(1.0, 0.0)) and math.isnan(ratio(math.nan, 1.0))
    current = Row("CPU per run, total", "sqlite", "6.00 ms", "", None, ["6.00", "6.20"], 6.0)
    ref = Row("CPU per run, total", "sqlite", "8.00 ms", "", None, ["8.00"], 8.0)
    lat = Row("latency p50", "sqlite", "1.20 ms", "<= 1.50 ms", True, ["1.20"], 1.2)
    lat_ref = Row("latency p50", "sqlite", "2.00 ms", "<= 1.50 ms", False, ["2.00"], 2.0)
    ceiling = Row("bare handler (ceiling)", "-", "20,000 req/s", "", None, ["20,000"], 20000.0)
    text = compare_table([(current, ref), (lat, lat_ref), (ceiling, "- (the harness's own)")], "REF HEAD~1")
    lines = text.splitlines()
    assert lines[0].split()[:5] == ["benchmark", "db", "current", "REF", "HEAD~1"]
    assert "6.00 ms" in lines[1] and "8.00 ms" in lines[1] and "0.75x" in lines[1]
    assert lines[1].endswith("6.00, 6.20 / 8.00")
    assert "0.60x" in lines[2] and "yes / no" in lines[2]
    assert "- (the harness's own)" in lines[3] and "n/a" in lines[3]
    failed = compare_cells(current, "failed on REF (TimeoutError)")
    assert failed[3] == "failed on REF (TimeoutError)" and failed[4] == "n/a"


def test_compare_interleaves_the_sides_and_says_when_ref_failed() -> None:
    from bench.__main__ import Bench
    from bench.services import Code

    codes = [Code("current", Path("."), "python", "nats-server"), Code("REF", Path("."), "python", "n")]
    b = Bench(argparse.Namespace(repeats=3, only=[]), codes)
    b.systems = ["A", "B"]  # type: ignore[list-item]
    calls: list[str] = []

    def work(side: str) -> dict:
        calls.append(side)
        if side == "B":
            raise TimeoutError("no answer")
        return {"ms": float(len(calls))}

    runs = b.repeat("case", work)
    assert calls == ["A", "B", "A", "B", "A", "B"]
    assert b.row("case p50", "sqlite", runs, "ms", "ms", 5.0, higher=False) == 3.0
    assert b.rows[0].figure == "3.00 ms" and b.rows[0].met is True
    assert b.ref_rows == ["failed on REF (TimeoutError)"]
    assert b.failures == ["case [REF]: TimeoutError"] * 3
    b.systems = ["A", None]  # type: ignore[list-item]
    b.row("case again", "sqlite", b.repeat("case", lambda s: {"ms": 1.0}), "ms", "ms")
    assert b.ref_rows[-1] == "failed on REF (its services did not start)"


# --- authentication: every request carries the run's admin token; a refused one fails loudly --------


class _Gateway(BaseHTTPRequestHandler):
    """Answers 200 to `Authorization: Bearer <token>`, 401 to anything else, on keep-alive."""

    protocol_version = "HTTP/1.1"
    token = ""

    def do_GET(self) -> None:
        self.send_response(200 if self.headers.get("Authorization") == f"Bearer {self.token}" else 401)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def _serve(token: str) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("G", (_Gateway,), {"token": token}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def run_token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(auth.ENV, "bench-token-0123456789")
    monkeypatch.setattr(auth, "_token", None)
    monkeypatch.setattr(auth, "_keys", {})
    monkeypatch.delenv(auth.KEYS_ENV, raising=False)
    return "bench-token-0123456789"


def test_the_token_is_the_environments_and_every_gateway_gets_it_under_both_names(run_token: str) -> None:
    assert auth.bearer("http://127.0.0.1:8000") == {"Authorization": f"Bearer {run_token}"}
    env = auth.gateway_env()
    assert env["AGENTBUS_ADMIN_TOKEN"] == env["AGENTBUS_API_TOKEN"] == run_token
    assert float(env["GATEWAY_WRITE_RATE"]) >= 1e6 and int(env["GATEWAY_WRITE_BURST"]) >= 1e6
    assert int(env["GATEWAY_MAX_STREAMS"]) > 10 * 1000  # far above the largest fan-out
    assert auth.tool_env()[auth.ENV] == run_token
    assert [auth.refused(c) for c in (None, 1000, 1013, 4401, 4403, 4429)] == [False] * 3 + [True] * 3


def test_a_gateway_with_a_key_is_sent_its_key_and_the_loads_get_the_keys(
    run_token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth.use_key(18001, "ab_key_of_18001")
    assert auth.bearer("http://127.0.0.1:18001/api/tasks") == {"Authorization": "Bearer ab_key_of_18001"}
    assert auth.bearer("127.0.0.1:18001") == auth.bearer(18001) == auth.bearer("ws://127.0.0.1:18001/ws")
    assert auth.bearer(18002) == {"Authorization": f"Bearer {run_token}"}  # no key there: the token
    env = auth.tool_env()
    # A load process starts with no keys of its own and reads them from its environment.
    monkeypatch.setattr(auth, "_keys", {})
    monkeypatch.setenv(auth.KEYS_ENV, env[auth.KEYS_ENV])
    assert auth.credential(18001) == "ab_key_of_18001" and auth.credential(18002) == run_token


def test_httpload_sends_the_token_and_fails_on_answers_not_2xx(
    run_token: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert served(Counter({200: 3, 201: 1, 302: 5, 401: 2})) == 4  # a redirect is not served either
    assert b"\r\nAuthorization: Bearer t\r\n" in build_request(
        "GET", "h:1", "/", headers={"Authorization": "Bearer t"}
    )
    good = _serve(run_token)
    try:
        httpload_main(
            [f"http://127.0.0.1:{good.server_port}/api/tasks/x", "--duration", "0.2", "--connections", "2"]
        )
    finally:
        good.shutdown()
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] > 0 and result["errors"] == 0 and set(result["statuses"]) == {"200"}
    bad = _serve("another-token-0123456789")
    try:
        with pytest.raises(SystemExit) as refused:
            httpload_main(
                [f"http://127.0.0.1:{bad.server_port}/api/tasks/x", "--duration", "0.2", "--connections", "2"]
            )
    finally:
        bad.shutdown()
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] == 0 and result["rps"] == 0 and result["errors"] >= result["requests"] > 0
    assert "not answered 2xx" in str(refused.value) and "'401'" in str(refused.value)


def test_wrk_sends_the_token_from_its_script_and_counts_non_2xx() -> None:
    script = wrk_script("POST", '{"name": "bench"}', {"Authorization": "Bearer t"})
    assert 'wrk.method = "POST"' in script and 'wrk.headers["Authorization"] = "Bearer t"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert "wrk.body" not in wrk_script("GET", "", {"Authorization": "Bearer t"})
    out = (
        "  Latency Distribution\n     50%  310.00us\n     99%    1.20ms\n"
        "  20000 requests in 2.00s, 3.00MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n"
        "  Non-2xx or 3xx responses: 20000\nRequests/sec:  10000.00\n"
    )
    r = parse_wrk(out)
    assert r["rps"] == 10000 and r["errors"] == 20000 and r["socket_errors"] == 3
    assert r["p50_ms"] == 0.31 and r["p99_ms"] == 1.2


AUTH_T = {"Authorization": "Bearer t"}


class _Transport:
    def __init__(self) -> None:
        self.sent = b""
        self.closing = False

    def write(self, data: bytes) -> None:
        self.sent += data

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing


async def test_stream_handshakes_carry_the_token_and_a_refusal_fails() -> None:
    for sse in (False, True):
        client = StreamClient("h:1", "/ws/stream", lambda raw: None, sse=sse, headers=AUTH_T)
        transport = _Transport()
        client.connection_made(transport)  # type: ignore[arg-type]
        assert b"\r\nAuthorization: Bearer t\r\n\r\n" in transport.sent and transport.sent.endswith(
            b"\r\n\r\n"
        )
    # Accepted, then closed with 4401 (no credential): refused, and the load process says so.
    client = StreamClient("h:1", "/ws/stream", lambda raw: None, headers=AUTH_T)
    client.connection_made(_Transport())  # type: ignore[arg-type]
    client.data_received(
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + bytes([0x88, 2]) + (4401).to_bytes(2, "big")
    )
    assert client.close_code == 4401
    with pytest.raises(RuntimeError, match="refused 1 streams"):
        check_refused([client])
    # An SSE stream answered 401 never opens.
    sse = StreamClient("h:1", "/api/runs/r/events", lambda raw: None, sse=True)
    sse.connection_made(_Transport())  # type: ignore[arg-type]
    sse.data_received(b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n")
    with pytest.raises(RuntimeError, match="answered 401"):
        await sse.opened
