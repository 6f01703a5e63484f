"""Profile a service under one benchmark's load with py-spy (not installed by the project:
`pip install py-spy` anywhere and put it on PATH, or pass --py-spy).

    python -m bench.profile get|post|events|sse|fanout|runs [--db sqlite] [--service gateway|runner|metrics]

Writes the raw collapsed stacks to var/profile-<scenario>-<service>.txt and prints the functions
with the most samples (own time and inclusive).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench import scenarios
from bench.services import ROOT, agentbus, postgres


def top(raw: Path, n: int = 25) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        k = int(count)
        total += k
        frames = [f.split(" (")[0] + " " + f.rsplit("/", 1)[-1].rstrip(")") for f in stack.split(";")]
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    out = [f"{total} samples", "own time:"]
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in own.most_common(n)]
    out.append("inclusive:")
    out += [f"  {v / total * 100:5.1f}%  {k}" for k, v in incl.most_common(n * 2)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=["get", "post", "events", "sse", "fanout", "runs"])
    p.add_argument("--db", default="sqlite")
    p.add_argument("--service", default="gateway", choices=["gateway", "runner", "metrics"])
    p.add_argument("--duration", type=float, default=8)
    p.add_argument("--py-spy", default=shutil.which("py-spy") or "py-spy")
    p.add_argument("--clients", type=int, default=1000)
    p.add_argument("--rate", type=float, default=0)
    p.add_argument("--idle", action="store_true", help="sample waiting threads too (for latency, not CPU)")
    a = p.parse_args(argv)
    out = ROOT / "var" / f"profile-{a.scenario}-{a.service}-{a.db}.txt"
    out.parent.mkdir(exist_ok=True)
    with ExitStack() as stack:
        admin = stack.enter_context(postgres()) if a.db == "postgresql" else None
        system = stack.enter_context(agentbus(a.db, admin))
        proc = {
            "gateway": system.gateways[0][0].proc,
            "runner": system.runners[0].proc,
            "metrics": system.metrics[0].proc,
        }[a.service]
        assert proc is not None
        task = scenarios.create_task(system)
        d = a.duration
        load = {
            "get": lambda: scenarios.http_max(f"{system.base_url}/api/tasks/{task['id']}", duration=d + 2),
            "post": lambda: scenarios.http_max(
                f"{system.base_url}/api/tasks", "POST", '{"name": "p"}', d + 2
            ),
            "events": lambda: scenarios.event_latency(system, a.rate or 500, d + 2),
            "sse": lambda: scenarios.event_latency(system, a.rate or 500, d + 2, sse=True),
            "fanout": lambda: scenarios.fanout(system, a.clients, 10, a.rate or 60, d + 2),
            "runs": lambda: scenarios.run_latency(system, a.rate or 100, d + 2),
        }[a.scenario]
        result: dict = {}
        worker = threading.Thread(target=lambda: result.update(load()))
        worker.start()
        time.sleep(3 if a.scenario in ("fanout", "events", "sse") else 1)
        subprocess.run(
            [
                a.py_spy,
                "record",
                "-d",
                str(int(d)),
                "-p",
                str(proc.pid),
                "-o",
                str(out),
                "-f",
                "raw",
                "--nonblocking",
                *(["--idle"] if a.idle else []),
            ],
            capture_output=True,
            check=True,
        )
        worker.join()
    print({k: v for k, v in result.items() if not isinstance(v, dict)})
    print(top(out))
    print(f"raw stacks: {out}")


if __name__ == "__main__":
    main()
