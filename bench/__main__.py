"""`make bench` / `python -m bench`: every benchmark, on SQLite and PostgreSQL, medians of several runs.

Prints the table and, after a full run (every benchmark, both databases, not --quick), writes it
into docs/benchmarks.md between its `bench:begin`/`bench:end` markers (the hand-written analysis
around them is kept); --out FILE writes any run's table into FILE instead.

--compare REF measures this checkout and the git ref REF in the same run: REF is checked out into
a temporary worktree with its own environment, its services are started from there and driven by
this checkout's harness, the two measured in turn (current, REF, current, REF...), and the table
has both medians and current/REF. A comparison writes no page.
"""

from __future__ import annotations

import argparse
import math
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import quiet, report, scenarios, seed
from bench.services import (
    ROOT,
    Code,
    RefError,
    agentbus,
    bare_http,
    current_code,
    gateway_pid,
    nats_responder,
    postgres,
    ref_checkout,
    rss_kb,
)
from bench.stats import Row, compare_table, fmt, median_of, plain_table
from tests.support.servers import create_database, nats_server
from tests.support.system import System

DOC = ROOT / "docs" / "benchmarks.md"
ALL = (
    "ceilings",
    "get",
    "post",
    "events",
    "sse",
    "fanout",
    "runs",
    "runner-events",
    "lists",
    "parked",
    "memory",
    "startup",
    "metrics-queries",
)


SERVICES = ("nats-server", "gateway", "runner", "metrics")


@dataclass
class Runs:
    """One measurement's results, per side: [current] or, with --compare, [current, REF]."""

    sides: list[list[dict]]
    errors: list[str]  # per side: why it has no result ("" if none failed)

    def each(self) -> Iterator[dict]:
        for side in self.sides:
            yield from side


class Bench:
    def __init__(self, args: argparse.Namespace, codes: list[Code]) -> None:
        self.a = args
        self.codes = codes  # [this checkout] or, with --compare, [this checkout, REF]
        self.comparing = len(codes) > 1
        self.rows: list[Row] = []
        self.ref_rows: list[Row | str] = []  # with --compare: REF's row beside each of self.rows
        self.ceiling_rps = math.nan
        self.failures: list[str] = []
        self.systems: list[System | None] = []

    def wants(self, name: str) -> bool:
        return name in self.a.only

    def repeat(
        self, what: str, fn: Callable[[Any], dict], over: list[Any] | None = None, repeats: int | None = None
    ) -> Runs:
        """`fn(system)` `repeats` times on each side's system (or each of `over`), interleaved: current,
        REF, current, REF... so that what the machine does meanwhile falls on both alike."""
        targets = self.systems if over is None else over
        sides: list[list[dict]] = [[] for _ in targets]
        errors = ["" for _ in targets]
        for i in range(repeats or self.a.repeats):
            for k, target in enumerate(targets):
                tag = ""
                if self.comparing:
                    tag = " [harness]" if len(targets) == 1 else f" [{'current' if k == 0 else 'REF'}]"
                if target is None:
                    errors[k] = errors[k] or "its services did not start"
                    continue
                try:
                    if isinstance(target, System):
                        self.settle()
                    t0 = time.perf_counter()
                    result = fn(target)
                except Exception as exc:  # one broken case must not lose the others' figures
                    print(
                        f"  {what}{tag} #{i + 1} FAILED: {type(exc).__name__}: {str(exc)[-2000:]}", flush=True
                    )
                    self.failures.append(f"{what}{tag}: {type(exc).__name__}")
                    errors[k] = type(exc).__name__
                    continue
                sides[k].append(result)
                elapsed = time.perf_counter() - t0
                print(f"  {what}{tag} #{i + 1} ({elapsed:.1f}s): {report.brief(result)}", flush=True)
        return Runs(sides, errors)

    def settle(self) -> None:
        """PostgreSQL's maintenance debt from earlier work paid before a measurement (bench/quiet.py),
        on every side's database: a --compare's other system shares the server."""
        if self.a.settle:
            for system in self.systems:
                if system is not None:
                    quiet.settle(system.env.get("DATABASE_URL"))

    def once(self, what: str, fn: Callable[[Any], dict]) -> Runs:
        return self.repeat(what, fn, repeats=1)

    @staticmethod
    def _side_row(
        bench: str,
        db: str,
        runs: list[dict],
        key: str,
        unit: str,
        target: float | None,
        higher: bool,
        scale: float,
        extra: str,
    ) -> Row:
        value = median_of(runs, key) * scale
        met = None
        if target is not None and not math.isnan(value):
            met = value >= target if higher else value <= target
        sign = ">=" if higher else "<="
        return Row(
            bench,
            db,
            fmt(value, unit) + extra,
            f"{sign} {fmt(target, unit)}" if target is not None else "",
            met,
            [fmt(r.get(key, math.nan) * scale) for r in runs],
            value,
        )

    def row(
        self,
        bench: str,
        db: str,
        runs: Runs,
        key: str,
        unit: str,
        target: float | None = None,
        higher: bool = True,
        scale: float = 1.0,
        extra: str = "",
    ) -> float:
        """A row of the table from the median of the runs; with --compare REF's beside it."""
        args = (key, unit, target, higher, scale, extra)
        current = self._side_row(bench, db, runs.sides[0], *args)
        self.rows.append(current)
        if self.comparing:
            if len(runs.sides) == 1:
                self.ref_rows.append("- (the harness's own)")
            elif not runs.sides[1] and runs.errors[1]:
                self.ref_rows.append(f"failed on REF ({runs.errors[1]})")
            else:
                self.ref_rows.append(self._side_row(bench, db, runs.sides[1], *args))
        return current.value

    # --- the benchmarks ------------------------------------------------------------------------------

    def ceilings(self) -> None:
        """The harness's own baselines: the same code on both sides of a --compare, so measured once."""
        d = self.a.duration
        harness = ["harness"]
        print("ceilings: bare Litestar handler, bare nats-py request/reply", flush=True)
        with bare_http() as base:
            url = f"{base}/api/tasks/0123456789abcdef0123456789abcdef"
            runs = self.repeat("bare handler max", lambda _: scenarios.http_max(url, duration=d), harness)
            self.ceiling_rps = self.row("bare Litestar handler (ceiling)", "-", runs, "rps", "req/s")
        with nats_server() as server, nats_responder(server.url):
            runs = self.repeat(
                "nats req/reply", lambda _: scenarios.nats_round_trip(server.url, d, 1), harness
            )
            self.row("bare nats-py request/reply p50 (ceiling)", "-", runs, "p50_ms", "ms", higher=False)
            self.row("bare nats-py request/reply p99 (ceiling)", "-", runs, "p99_ms", "ms", higher=False)
            runs = self.repeat(
                "nats req/reply x32", lambda _: scenarios.nats_round_trip(server.url, d, 32), harness
            )
            self.row("bare nats-py request/reply, 32 in flight", "-", runs, "rps", "msg/s")

    def http(
        self,
        db: str,
        name: str,
        method: str,
        path: Callable[[System], str],
        body: str,
        target_rps: float,
        target_p99: float,
    ) -> None:
        d = self.a.duration

        def peak(system: System) -> dict:
            url = f"{system.base_url}{path(system)}"
            return scenarios.with_cpu(gateway_pid(system), lambda: scenarios.http_max(url, method, body, d))

        runs = self.repeat(f"{name} max", peak)
        for r in runs.each():
            served = r["rps"] * r["wall_s"]
            r["cpu_us"] = r["server_cpu_s"] / served * 1e6 if served else math.nan
            r["ratio"] = r["rps"] / self.ceiling_rps if self.ceiling_rps == self.ceiling_rps else math.nan
        top = self.row(f"{name} throughput", db, runs, "rps", "req/s", target_rps)
        self.row(f"{name} gateway CPU per request", db, runs, "cpu_us", "us", higher=False)
        if name.startswith("GET") and not math.isnan(self.ceiling_rps):
            self.row(f"{name} share of bare-handler ceiling", db, runs, "ratio", "%", 30.0, scale=100)
        # Half of this checkout's peak, for REF too: both are measured at the same rate.
        rate = max(50.0, (top if not math.isnan(top) else target_rps) / 2)
        runs = self.repeat(
            f"{name} at {rate:.0f}/s",
            lambda s: scenarios.http_at_rate(f"{s.base_url}{path(s)}", rate, method, body, d),
        )
        self.row(
            f"{name} p99 at half load ({rate:,.0f} req/s)", db, runs, "p99_ms", "ms", target_p99, higher=False
        )
        self.row(f"{name} p50 at half load", db, runs, "p50_ms", "ms", higher=False)

    def events(self, db: str, sse: bool) -> None:
        kind = "SSE" if sse else "WebSocket"
        runs = self.repeat(
            f"{kind} event latency", lambda s: scenarios.event_latency(s, 500, self.a.duration, sse=sse)
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

    def runner_events(self, db: str) -> None:
        a = self.a
        runs = self.repeat(
            "real-runner event latency",
            lambda s: scenarios.runner_event_latency(s, a.runner_rate, a.runner_steps, a.duration),
        )
        n = f"scripted, {a.runner_steps} steps x 5 ms, {a.runner_rate:g} runs/s"
        for q, target in (("p50", 1.5), ("p99", 5.0)):
            self.row(
                f"real-runner event latency {q}, runner -> stored -> /ws/stream ({n})",
                db,
                runs,
                f"progress_{q}_ms",
                "ms",
                target,
                higher=False,
            )

    def fanout(self, db: str, path: str = "/ws/stream", label: str = "/ws/stream") -> None:
        a = self.a
        runs = self.repeat(
            f"fan-out {label}",
            lambda s: scenarios.fanout(s, a.clients, a.stalled, a.fanout_rate, a.duration, path),
        )
        for r in runs.each():
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

    def lists(self, db: str) -> None:
        """Every list and filter of the API and a run's log against GET-by-id, on the fresh
        database and again with a million tasks and runs seeded into it."""
        a = self.a
        d = a.duration
        where: dict[int, dict[str, str]] = {}

        def paths(system: System) -> dict[str, str]:
            if id(system) not in where:
                # Full pages from the start (ten tasks and runs completed, one task with eleven runs),
                # newer than anything seeded: both stages list the same rows.
                fast = {"require_approval": False, "agent_config": scenarios.FAST_RUN}
                made = [scenarios.create_task(system, **fast) for _ in range(11)]
                started = [scenarios.create_run(system, t["id"]) for t in made]
                started += [scenarios.create_run(system, made[0]["id"]) for _ in range(10)]
                for run in started:
                    scenarios.wait_run(system, run["id"], "completed")
                where[id(system)] = {"task": made[0]["id"], "run": started[0]["id"]}
            w = where[id(system)]
            out = {
                "GET /api/tasks/{id}": f"/api/tasks/{w['task']}",
                **scenarios.list_paths(w["task"], w["run"]),
            }
            if "deep" in w:
                out["GET /api/tasks?cursor= (a page half the tasks deep)"] = (
                    f"/api/tasks?limit=10&cursor={w['deep']}"
                )
            return out

        def measure(system: System) -> dict:
            """Each list between two runs of GET-by-id (GET, list, GET, list ... GET): its share is
            of the mean of the two beside it, so a host that speeds up or slows down over the
            minute a repeat takes moves both alike. GET-by-id's own figure is its median."""
            rest = paths(system)
            by_id = rest.pop("GET /api/tasks/{id}")

            def rps(path: str) -> float:
                return float(scenarios.http_max(f"{system.base_url}{path}", duration=d)["rps"])

            gets, out, ratios = [rps(by_id)], {}, {}
            for name, path in rest.items():
                out[name] = rps(path)
                gets.append(rps(by_id))
                ratios[name] = out[name] / ((gets[-2] + gets[-1]) / 2)
            out = {"GET /api/tasks/{id}": statistics.median(gets), **out}
            return {
                **{f"rps {k}": v for k, v in out.items()},
                **{f"ratio {k}": v for k, v in ratios.items()},
            }

        stages: dict[str, Runs] = {}
        for stage in ("empty", f"{a.seed_rows:,} tasks and runs"):
            if stage != "empty":
                for system in self.systems:
                    if system is not None:
                        took = seed.seed(system.env["DATABASE_URL"], a.seed_rows, a.seed_rows)
                        print(f"  seeded {a.seed_rows:,} tasks and runs in {took:.1f}s", flush=True)
                        try:
                            where[id(system)]["deep"] = scenarios.deep_cursor(system, a.seed_rows // 2)
                        except (KeyError, TypeError):  # a version without cursors
                            print("  no next_cursor in its pages: the deep page is not measured", flush=True)
            stages[stage] = runs = self.repeat(f"lists ({stage})", measure)
            for name in paths(next(s for s in self.systems if s is not None)):
                self.row(f"{name} ({stage})", db, runs, f"rps {name}", "req/s")
                if name != "GET /api/tasks/{id}":
                    self.row(f"{name} / GET-by-id ({stage})", db, runs, f"ratio {name}", "%", 50, scale=100)
        empty, seeded = stages.values()
        for name in scenarios.list_paths("", ""):
            flat = Runs(
                [
                    [{"flat": median_of(s, f"rps {name}") / median_of(e, f"rps {name}")}] if e and s else []
                    for e, s in zip(empty.sides, seeded.sides, strict=True)
                ],
                seeded.errors,
            )
            self.row(f"{name}: seeded / empty", db, flat, "flat", "%", 90, scale=100)

    def runs(self, db: str) -> None:
        a = self.a
        runs = self.repeat(
            "run throughput",
            lambda s: scenarios.with_service_cpu(s, lambda: scenarios.run_throughput(s, a.run_count, 32)),
        )
        for r in runs.each():
            done = r.get("completed") or 0
            for name in (*SERVICES, "total"):
                r[f"cpu_ms_{name}"] = r[f"cpu_s_{name}"] / done * 1e3 if done else math.nan
        self.row(
            "runs/s created -> completed and stored (scripted, 1 step)", db, runs, "runs_per_s", "runs/s", 200
        )
        for name in SERVICES:
            self.row(f"CPU per run, {name} (run throughput)", db, runs, f"cpu_ms_{name}", "ms", higher=False)
        self.row(
            "CPU per run, all four services (run throughput)", db, runs, "cpu_ms_total", "ms", higher=False
        )
        runs = self.repeat("runs at 100/s", lambda s: scenarios.run_latency(s, 100, a.duration))
        self.row("create-to-completion p50 at 100 runs/s", db, runs, "p50_ms", "ms", 20, higher=False)
        self.row("create-to-completion p99 at 100 runs/s", db, runs, "p99_ms", "ms", 100, higher=False)

    def parked(self, db: str) -> None:
        """Waiting costs nothing: runs parked awaiting approval slow no new run, and drain fast."""
        a = self.a
        n = a.parked

        def measure(system: System) -> dict:
            return scenarios.parked(system, n, a.run_count, a.repeats, a.duration)

        runs = self.once(f"{n:,} parked", measure)
        self.row("runs/s, none parked", db, runs, "none_runs_per_s", "runs/s")
        self.row(f"runs/s, {n:,} parked", db, runs, "parked_runs_per_s", "runs/s")
        self.row(f"runs/s {n:,} parked / none", db, runs, "throughput_ratio", "%", 90, scale=100)
        self.row(
            "create-to-completion p50 at 100 runs/s, none parked", db, runs, "none_p50_ms", "ms", higher=False
        )
        self.row(
            f"create-to-completion p50 at 100 runs/s, {n:,} parked",
            db,
            runs,
            "parked_p50_ms",
            "ms",
            higher=False,
        )
        self.row(
            f"create-to-completion p50 at 100 runs/s, {n:,} parked / none",
            db,
            runs,
            "p50_ratio",
            "%",
            110,
            higher=False,
            scale=100,
        )
        self.row(
            f"runs held by the runner while {n:,} are parked", db, runs, "runner_active_while_parked", ""
        )
        self.row(
            f"runner RSS with {n:,} parked",
            db,
            runs,
            "runner_rss_kb",
            "MB",
            120,
            higher=False,
            scale=1 / 1024,
        )
        self.row(f"drain: {n:,} approved, runs/s", db, runs, "drain_runs_per_s", "runs/s")
        self.row(f"drain / plain runs/s ({n:,} approved)", db, runs, "drain_ratio", "%", 80, scale=100)

    def run_db(self, db: str, pg_admin: str | None) -> None:
        print(f"\n== {db}", flush=True)
        with ExitStack() as stack:
            self.systems = []
            for k, code in enumerate(self.codes):
                try:
                    self.systems.append(stack.enter_context(agentbus(db, pg_admin, code=code)))
                except Exception as exc:
                    if k == 0:
                        raise
                    # REF's columns say so; this checkout's figures are still measured.
                    print(f"  {code.label}'s services did not start on {db}: {exc!s:.2000}", flush=True)
                    self.failures.append(f"{code.label} on {db}: did not start")
                    self.systems.append(None)
            self.benchmarks(db)
            self.systems = []

    def benchmarks(self, db: str) -> None:
        if self.wants("memory"):
            time.sleep(2)
            idle = self.once("gateway RSS idle", lambda s: {"rss_kb": rss_kb(gateway_pid(s))})
            self.row("gateway RSS idle", db, idle, "rss_kb", "MB", 100, higher=False, scale=1 / 1024)
            # On the fresh gateway: once the fan-out has grown its heap, RSS no longer tells.
            # Once: memory a process freed is not returned to the system, so a second run says 0.
            runs = self.once("ws memory", lambda s: scenarios.ws_memory(s, self.a.clients))
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
            tasks: dict[int, str] = {}

            def task_path(system: System) -> str:
                if id(system) not in tasks:
                    tasks[id(system)] = scenarios.create_task(system)["id"]
                return f"/api/tasks/{tasks[id(system)]}"

            self.http(db, "GET /api/tasks/{id}", "GET", task_path, "", 2500, 10)
        if self.wants("post"):
            self.http(db, "POST /api/tasks", "POST", lambda _: "/api/tasks", '{"name": "bench"}', 1000, 20)
        if self.wants("events"):
            self.events(db, sse=False)
        if self.wants("sse"):
            self.events(db, sse=True)
        if self.wants("fanout"):
            self.fanout(db)
        if self.wants("runs"):
            self.runs(db)
        if self.wants("runner-events"):
            self.runner_events(db)
        if self.wants("lists"):
            self.lists(db)
        if self.wants("parked"):
            self.parked(db)
        if self.wants("memory"):
            mem = self.once("runner memory", lambda s: scenarios.runner_memory(s, 100))
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
            after = self.once("gateway RSS after", lambda s: {"rss_kb": rss_kb(gateway_pid(s))})
            self.row("gateway RSS after the benchmarks", db, after, "rss_kb", "MB", scale=1 / 1024)
            self.row("runner RSS idle (before)", db, mem, "before_kb", "MB", scale=1 / 1024)

    def metrics_queries(self, db: str, pg_admin: str | None) -> None:
        """The metrics service's queries over up to a million rows, and its recording rate
        (bench/metricsquery.py; the harness's code only, in-process, no --compare side)."""
        steps = (10_000, 100_000, 1_000_000) if not self.a.quick else (10_000,)

        def measure(_: Any) -> dict:
            url = create_database(pg_admin, f"mq_{uuid.uuid4().hex[:12]}") if pg_admin else ""
            args = ["--steps", ",".join(map(str, steps)), "--requests", "20", "--events", "5000"]
            return scenarios.tool(
                "metricsquery", *args, *(["--database-url", url] if url else []), timeout=1800
            )

        runs = self.repeat("metrics queries", measure, over=[0], repeats=1)
        for step in steps:
            for label in ("summary", "agent summary", "task summary", "series 1h"):
                key = f"p95_ms {label} @{step}"
                self.row(f"metrics {label} p95, {step:,} rows", db, runs, key, "ms", 100, higher=False)
        self.row("metrics recording, events/s", db, runs, "events_per_s", "events/s", 2000)
        top = steps[-1]
        self.row(
            f"metrics rows counted into sketches per second (the step to {top:,})",
            db,
            runs,
            f"counted_rows_per_s @{top}",
            "rows/s",
        )

    def startup(self) -> None:
        runs = self.repeat("make run -> /ready", lambda code: scenarios.startup(root=code.root), self.codes)
        self.row(
            "start-up: make run -> /ready 200 (SQLite, warm env)",
            "sqlite",
            runs,
            "ready_s",
            "s",
            10,
            higher=False,
        )


def measure(b: Bench, dbs: list[str]) -> None:
    if b.wants("ceilings") or b.wants("get"):
        b.ceilings()
    if "sqlite" in dbs:
        b.run_db("sqlite", None)
        if b.wants("metrics-queries"):
            b.metrics_queries("sqlite", None)
    if "postgresql" in dbs:
        with postgres() as admin:
            b.run_db("postgresql", admin)
            if b.wants("metrics-queries"):
                b.metrics_queries("postgresql", admin)
    if b.wants("startup"):
        b.startup()


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def compare(a: argparse.Namespace, dbs: list[str]) -> int:
    """This checkout against REF (see the module's docstring); REF's worktree is always removed."""
    # SIGTERM unwinds like Ctrl-C: the services stop and REF's worktree is removed.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ref_checkout(a.compare) as ref:
            b = Bench(a, [current_code(), ref])
            measure(b, dbs)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"\ncurrent = this checkout ({report.commit()}); REF = {ref.label}", flush=True)
    print(compare_table(list(zip(b.rows, b.ref_rows, strict=True)), f"REF {ref.label}"), flush=True)
    if b.failures:
        print("\nfailed: " + "; ".join(b.failures), flush=True)
    print(f"\na comparison: not written to {DOC.relative_to(ROOT)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (the median is quoted)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds of load per run")
    p.add_argument("--db", default="sqlite,postgresql")
    p.add_argument("--only", default=",".join(ALL), help=f"comma-separated subset of {','.join(ALL)}")
    p.add_argument(
        "--no-settle",
        dest="settle",
        action="store_false",
        help="on PostgreSQL, measure on what earlier cases left (no VACUUM and CHECKPOINT first)",
    )
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--stalled", type=int, default=10)
    p.add_argument("--fanout-rate", type=float, default=51.0, help="events/s published in the fan-out case")
    p.add_argument("--run-count", type=int, default=1000)
    p.add_argument("--parked", type=int, default=10_000, help="runs parked awaiting approval (parked case)")
    p.add_argument(
        "--seed-rows", type=int, default=1_000_000, help="tasks and runs seeded for the lists case"
    )
    p.add_argument(
        "--runner-rate", type=float, default=20.0, help="runs/s started in the real-runner event case"
    )
    p.add_argument("--runner-steps", type=int, default=10, help="steps (5 ms each) of those runs")
    p.add_argument(
        "--compare",
        metavar="REF",
        help="also measure the git ref REF (HEAD~1, a commit, a branch) in the same run, its services "
        "from a temporary worktree, interleaved with this checkout's; prints both and current/REF; "
        "writes no page",
    )
    p.add_argument("--quick", action="store_true", help="one short run of each: a smoke run, not figures")
    p.add_argument(
        "--out",
        help="the page to write the table into (default: docs/benchmarks.md, and only after a full run)",
    )
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.duration, a.run_count, a.clients = 1, 2.0, 200, 200
        a.parked = min(a.parked, 500)
        a.seed_rows = min(a.seed_rows, 20_000)
        a.stalled = min(a.stalled, 2)
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    unknown = set(a.only) - set(ALL)
    if unknown:
        p.error(f"unknown benchmarks: {', '.join(sorted(unknown))}")
    if a.compare and a.out:
        p.error("--compare writes no page: --out does not apply")
    command = "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:])
    started = time.time()
    dbs = [d.strip() for d in a.db.split(",") if d.strip()]
    if a.compare:
        try:
            return compare(a, dbs)
        except RefError as exc:
            print(f"compare: {exc}", file=sys.stderr, flush=True)
            return 1
    b = Bench(a, [current_code()])
    measure(b, dbs)
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
