"""`make bench` / `python -m bench`: every benchmark, on SQLite and PostgreSQL, medians of several runs.

Prints the table and, after a full run (every benchmark, both databases, not --quick), writes it
into docs/benchmarks.md between its `bench:begin`/`bench:end` markers (the hand-written analysis
around them is kept); --out FILE writes any run's table into FILE instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import report, scenarios
from bench.services import ROOT, agentbus, bare_http, gateway_pid, nats_responder, postgres, rss_kb
from bench.stats import Row, fmt, median_of, plain_table
from tests.support.servers import nats_server

DOC = ROOT / "docs" / "benchmarks.md"
ALL = ("ceilings", "get", "post", "events", "sse", "fanout", "runs", "memory", "startup")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.rows: list[Row] = []
        self.ceiling_rps = math.nan
        self.failures: list[str] = []

    def wants(self, name: str) -> bool:
        return name in self.a.only

    def repeat(self, what: str, fn: Callable[[], dict]) -> list[dict]:
        out = []
        for i in range(self.a.repeats):
            t0 = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:  # one broken case must not lose the others' figures
                print(f"  {what} #{i + 1} FAILED: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
                self.failures.append(f"{what}: {type(exc).__name__}")
                continue
            out.append(result)
            print(f"  {what} #{i + 1} ({time.perf_counter() - t0:.1f}s): {report.brief(result)}", flush=True)
        return out

    def row(
        self,
        bench: str,
        db: str,
        runs: list[dict],
        key: str,
        unit: str,
        target: float | None = None,
        higher: bool = True,
        scale: float = 1.0,
        extra: str = "",
    ) -> float:
        value = median_of(runs, key) * scale
        met = None
        if target is not None and not math.isnan(value):
            met = value >= target if higher else value <= target
        sign = ">=" if higher else "<="
        self.rows.append(
            Row(
                bench,
                db,
                fmt(value, unit) + extra,
                f"{sign} {fmt(target, unit)}" if target is not None else "",
                met,
                [fmt(r.get(key, math.nan) * scale) for r in runs],
            )
        )
        return value

    # --- the benchmarks ------------------------------------------------------------------------------

    def ceilings(self) -> None:
        d = self.a.duration
        print("ceilings: bare Litestar handler, bare nats-py request/reply", flush=True)
        with bare_http() as base:
            url = f"{base}/api/tasks/0123456789abcdef0123456789abcdef"
            runs = self.repeat("bare handler max", lambda: scenarios.http_max(url, duration=d))
            self.ceiling_rps = self.row("bare Litestar handler (ceiling)", "-", runs, "rps", "req/s")
        with nats_server() as server, nats_responder(server.url):
            runs = self.repeat("nats req/reply", lambda: scenarios.nats_round_trip(server.url, d, 1))
            self.row("bare nats-py request/reply p50 (ceiling)", "-", runs, "p50_ms", "ms", higher=False)
            self.row("bare nats-py request/reply p99 (ceiling)", "-", runs, "p99_ms", "ms", higher=False)
            runs = self.repeat("nats req/reply x32", lambda: scenarios.nats_round_trip(server.url, d, 32))
            self.row("bare nats-py request/reply, 32 in flight", "-", runs, "rps", "msg/s")

    def http(
        self,
        system,
        db: str,
        name: str,
        method: str,
        path: str,
        body: str,
        target_rps: float,
        target_p99: float,
    ) -> None:
        url = f"{system.base_url}{path}"
        pid = gateway_pid(system)
        d = self.a.duration
        runs = self.repeat(
            f"{name} max", lambda: scenarios.with_cpu(pid, lambda: scenarios.http_max(url, method, body, d))
        )
        for r in runs:
            served = r["rps"] * r["wall_s"]
            r["cpu_us"] = r["server_cpu_s"] / served * 1e6 if served else math.nan
            r["ratio"] = r["rps"] / self.ceiling_rps if self.ceiling_rps == self.ceiling_rps else math.nan
        peak = self.row(f"{name} throughput", db, runs, "rps", "req/s", target_rps)
        self.row(f"{name} gateway CPU per request", db, runs, "cpu_us", "us", higher=False)
        if name.startswith("GET") and not math.isnan(self.ceiling_rps):
            self.row(f"{name} share of bare-handler ceiling", db, runs, "ratio", "%", 30.0, scale=100)
        rate = max(50.0, (peak if not math.isnan(peak) else target_rps) / 2)
        runs = self.repeat(
            f"{name} at {rate:.0f}/s", lambda: scenarios.http_at_rate(url, rate, method, body, d)
        )
        self.row(
            f"{name} p99 at half load ({rate:,.0f} req/s)", db, runs, "p99_ms", "ms", target_p99, higher=False
        )
        self.row(f"{name} p50 at half load", db, runs, "p50_ms", "ms", higher=False)

    def events(self, system, db: str, sse: bool) -> None:
        kind = "SSE" if sse else "WebSocket"
        runs = self.repeat(
            f"{kind} event latency", lambda: scenarios.event_latency(system, 500, self.a.duration, sse=sse)
        )
        self.row(
            f"event latency p50, publish -> stored -> {kind} (500 ev/s)",
            db,
            runs,
            "p50_ms",
            "ms",
            1.5,
            higher=False,
        )
        self.row(
            f"event latency p99, publish -> stored -> {kind} (500 ev/s)",
            db,
            runs,
            "p99_ms",
            "ms",
            5.0,
            higher=False,
        )

    def fanout(self, system, db: str, path: str = "/ws/stream", label: str = "/ws/stream") -> None:
        a = self.a
        runs = self.repeat(
            f"fan-out {label}",
            lambda: scenarios.fanout(system, a.clients, a.stalled, a.fanout_rate, a.duration, path),
        )
        for r in runs:
            r["starved"] = float(r["min_client_frames"] < r["published"] or r["live_closed"] > 0)
        n = f"{a.clients} clients ({a.stalled} stalled) on {label}"
        self.row(f"fan-out frames/s delivered, {n}", db, runs, "frames_per_s", "frames/s", 50_000)
        self.row(f"fan-out latency p99, {n}", db, runs, "p99_ms", "ms", 100.0, higher=False)
        self.row(f"fan-out latency p50, {n}", db, runs, "p50_ms", "ms", higher=False)
        self.row(
            f"fan-out gateway CPU per frame delivered, {n}", db, runs, "cpu_us_per_frame", "us", higher=False
        )
        self.row(f"fan-out load client's CPU (cores busy), {n}", db, runs, "client_cores", "", higher=False)
        self.row(
            f"fan-out: live clients missing events or closed, {n}", db, runs, "starved", "", 0, higher=False
        )
        self.row(f"fan-out: stalled clients cut off, {n}", db, runs, "stalled_cut_off", "")

    def runs(self, system, db: str) -> None:
        a = self.a
        runs = self.repeat("run throughput", lambda: scenarios.run_throughput(system, a.run_count, 32))
        self.row(
            "runs/s created -> completed and stored (scripted, 1 step)", db, runs, "runs_per_s", "runs/s", 200
        )
        runs = self.repeat("runs at 100/s", lambda: scenarios.run_latency(system, 100, a.duration))
        self.row("create-to-completion p50 at 100 runs/s", db, runs, "p50_ms", "ms", 20, higher=False)
        self.row("create-to-completion p99 at 100 runs/s", db, runs, "p99_ms", "ms", 100, higher=False)

    def run_db(self, db: str, pg_admin: str | None) -> None:
        print(f"\n== {db}", flush=True)
        with agentbus(db, pg_admin) as system:
            if self.wants("memory"):
                time.sleep(2)
                idle = {"rss_kb": rss_kb(gateway_pid(system))}
                self.row("gateway RSS idle", db, [idle], "rss_kb", "MB", 100, higher=False, scale=1 / 1024)
            if self.wants("memory"):
                # On the fresh gateway: once the fan-out has grown its heap, RSS no longer tells.
                # Once: memory a process freed is not returned to the system, so a second run says 0.
                saved, self.a.repeats = self.a.repeats, 1
                runs = self.repeat("ws memory", lambda: scenarios.ws_memory(system, self.a.clients))
                self.a.repeats = saved
                self.row(
                    f"gateway RSS per open WebSocket ({self.a.clients} open)",
                    db,
                    runs,
                    "per_ws_kb",
                    "KB",
                    30,
                    higher=False,
                )
            if self.wants("get"):
                task = scenarios.create_task(system)
                self.http(system, db, "GET /api/tasks/{id}", "GET", f"/api/tasks/{task['id']}", "", 2500, 10)
            if self.wants("post"):
                self.http(system, db, "POST /api/tasks", "POST", "/api/tasks", '{"name": "bench"}', 1000, 20)
            if self.wants("events"):
                self.events(system, db, sse=False)
            if self.wants("sse"):
                self.events(system, db, sse=True)
            if self.wants("fanout"):
                self.fanout(system, db)
            if self.wants("runs"):
                self.runs(system, db)
            if self.wants("memory"):
                saved, self.a.repeats = self.a.repeats, 1
                mem = self.repeat("runner memory", lambda: scenarios.runner_memory(system, 100))
                self.a.repeats = saved
                self.row(
                    "runner RSS with 100 runs in flight",
                    db,
                    mem,
                    "during_kb",
                    "MB",
                    120,
                    higher=False,
                    scale=1 / 1024,
                )
                self.row(
                    "gateway RSS after the benchmarks",
                    db,
                    [{"rss_kb": rss_kb(gateway_pid(system))}],
                    "rss_kb",
                    "MB",
                    scale=1 / 1024,
                )
                self.row("runner RSS idle (before)", db, mem, "before_kb", "MB", scale=1 / 1024)

    def startup(self) -> None:
        runs = self.repeat("make run -> /ready", scenarios.startup)
        self.row(
            "start-up: make run -> /ready 200 (SQLite, warm env)",
            "sqlite",
            runs,
            "ready_s",
            "s",
            10,
            higher=False,
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median is quoted)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--stalled", type=int, default=10)
    p.add_argument("--fanout-rate", type=float, default=51.0, help="events/s published in the fan-out case")
    p.add_argument("--run-count", type=int, default=1000)
    p.add_argument("--quick", action="store_true", help="one short run of each: a smoke run, not figures")
    p.add_argument(
        "--out",
        help="the page to write the table into (default: docs/benchmarks.md, and only after a full run)",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.duration, a.run_count, a.clients = 1, 2.0, 200, 200
        a.stalled = min(a.stalled, 2)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = set(a.only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    b = Bench(a)
    if b.wants("ceilings") or b.wants("get"):
        b.ceilings()
    dbs = [d.strip() for d in a.db.split(",") if d.strip()]
    if "sqlite" in dbs:
        b.run_db("sqlite", None)
    if "postgresql" in dbs:
        with postgres() as admin:
            b.run_db("postgresql", admin)
    if b.wants("startup"):
        b.startup()
    print("\n" + plain_table(b.rows), flush=True)
    if b.failures:
        print("\nfailed: " + "; ".join(b.failures), flush=True)
    # The published page holds full runs only: a smoke run or a subset would replace its figures.
    full = not a.quick and set(a.only) == set(ALL) and set(dbs) == {"sqlite", "postgresql"}
    out = Path(a.out) if a.out else DOC if full else None
    if out is not None and not a.no_write:
        report.write(out, b.rows, command.strip(), time.time() - started)
        print(f"\nwritten to {out}", flush=True)
    elif out is None and not a.no_write:
        print(f"\nnot written to {DOC.relative_to(ROOT)}: not a full run (--out FILE writes it elsewhere)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
