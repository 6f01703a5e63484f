"""The benchmark harness's pure helpers (bench/): parsing, statistics, the report. No timing here."""

from __future__ import annotations

import math
from pathlib import Path

from bench.httpload import build_request, parse_response
from bench.report import BEGIN, END, write
from bench.stats import Row, fmt, median_of, percentile, plain_table, summary, table
from bench.streams import close_frame, parse_frames


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
