"""HTTP load on one URL, from a separate process: the closed-loop maximum (`wrk` where installed,
else bench.httpload) and the open-loop latency at a fixed rate (bench.httpload).

Every request carries this run's admin key, or token (bench.auth), and any answer that is not 2xx fails the
measurement: a refused request (401, 403, 429) is fast and would pass for throughput.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile

from bench import auth
from bench.services import tool

WRK = shutil.which("wrk")


def wrk_script(method: str, body: str, headers: dict[str, str]) -> str:
    """The Lua script that makes wrk send `method`, `body` and `headers` (one fixed request, built
    once by wrk: no Lua runs per request)."""
    lines = [f"wrk.method = {json.dumps(method)}"]
    if body:
        lines += [f"wrk.body = {json.dumps(body)}", 'wrk.headers["Content-Type"] = "application/json"']
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    return "\n".join(lines) + "\n"


def parse_wrk(out: str) -> dict:
    """wrk's report: req/s, the answers it counted as errors (status >= 400) and socket errors, p50/p99."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result = {
        "rps": float(rps.group(1)),
        "errors": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(g) for g in sockets.groups()) if sockets else 0,
        "client": "wrk",
    }
    for q, key in (("50", "p50_ms"), ("99", "p99_ms")):
        m = re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if m:
            value = float(m.group(1))
            result[key] = value / 1000 if m.group(2) == "us" else value * 1000 if m.group(2) == "s" else value
    return result


def _wrk(url: str, method: str, body: str, duration: float, connections: int) -> dict:
    # The credential goes in the script (a file only this user reads), not on wrk's command line.
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as script:
        script.write(wrk_script(method, body, auth.bearer(url)))
        script.flush()
        args = [WRK, "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--latency"]
        out = subprocess.run(
            [*args, "-s", script.name, url], capture_output=True, text=True, timeout=duration + 60
        ).stdout
    result = parse_wrk(out)
    if result["errors"]:
        raise RuntimeError(f"{method} {url}: wrk got {result['errors']} answers that are not 2xx")
    return result


def http_max(
    url: str, method: str = "GET", body: str = "", duration: float = 5, connections: int = 32
) -> dict:
    """Closed-loop maximum throughput (wrk where installed, else bench.httpload)."""
    if WRK and "{n}" not in body:
        return _wrk(url, method, body, duration, connections)
    args = [url, "--method", method, "--duration", str(duration), "--connections", str(connections)]
    if body:
        args += ["--body", body]
    return {**tool("httpload", *args), "client": "bench.httpload"}


def http_at_rate(url: str, rate: float, method: str = "GET", body: str = "", duration: float = 5) -> dict:
    """Open-loop latency at a fixed rate (bench.httpload; wrk has no fixed-rate mode)."""
    args = [url, "--method", method, "--duration", str(duration), "--rate", str(rate)]
    if body:
        args += ["--body", body]
    return tool("httpload", *args)
