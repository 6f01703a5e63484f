"""Turn the fault tests' result rows into docs/reliability.md.

make reliability   # runs tests/e2e/test_faults.py, then this script
make soak          # 1,000 runs per fault instead of 12 (AGENTBUS_SOAK=1)

Each command has its own section of the page (between `<!-- COMMAND -->` markers): a run
rewrites its section and keeps the other's.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(results: Path, out: Path, command: str) -> int:
    rows = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    lines = [
        f"## `{command}`",
        "",
        f"Produced by `{command}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit "
        f"`{commit.stdout.strip() or '?'}`, {platform.machine()} with {platform.python_version()}.",
        "Each row is one test of `tests/e2e/test_faults.py`: it starts nats-server(s), the metrics",
        "service, runners and gateways as real processes, starts a batch of runs (half of them",
        "needing approval, approved by a client through the gateways), injects the fault at a random",
        "moment (the seed is printed; `AGENTBUS_FAULT_SEED` replays it), then checks every invariant.",
        "",
        "| fault | runs | terminal | checked | lost |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['fault']} | {r['runs']} | {r['terminal']} | {r['checked']} | {r['lost']} |")
    problems = [p for r in rows for p in r.get("problems", [])]
    lines += [
        "",
        "`lost` counts every violated invariant: a run not terminal, a gap or duplicate `seq` in the",
        "stored log or on a WebSocket replay, a terminal event that is not the last or not alone, a",
        "task counter or a metric count that does not match the runs. It must be 0.",
        "",
        "Bounds: a run whose runner dies is redelivered after `RUNNER_ACK_WAIT_S` (30 s by default,",
        "3 s in these tests) and resumed from its checkpoint; a running run that no runner announces",
        'for `REAPER_AFTER_S` (90 s by default, 8 s here) ends `failed` ("runner lost") within one more',
        "`REAPER_INTERVAL_S` (10 s by default). A run waiting for approval is parked (held by no",
        "runner, so a runner's death costs it nothing); the broker wakes it at its deadline, and the",
        "reaper ends one whose deadline is `REAPER_AFTER_S` past twice without a runner applying it.",
    ]
    if problems:
        lines += ["", "### Problems seen", "", *[f"- {p}" for p in problems]]
    out.write_text(merged(out.read_text() if out.exists() else "", command, "\n".join(lines)))
    print(out.read_text())
    return 1 if any(r["lost"] for r in rows) else 0


TITLE = "# Reliability: faults injected, runs checked, nothing lost"


def merged(page: str, command: str, section: str) -> str:
    """The page with this command's section replaced (or added), the others kept in place."""
    sections: dict[str, str] = {}
    order: list[str] = []
    for part in page.split("<!-- ")[1:]:
        name, _, body = part.partition(" -->")
        if name.startswith("end "):
            continue
        sections[name] = body.split(f"<!-- end {name} -->")[0].strip("\n")
        order.append(name)
    if command not in sections:
        order.append(command)
    sections[command] = section
    body = "\n\n".join(f"<!-- {n} -->\n{sections[n]}\n<!-- end {n} -->" for n in order)
    return f"{TITLE}\n\n{body}\n"


if __name__ == "__main__":
    sys.exit(
        main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "make reliability")
    )
