"""A 3-node NATS cluster whose nodes live in network namespaces this process makes, so a test can
cut one node off from the other two (a network partition) and join it again.

Each node has two links to the root namespace, on two bridges this process makes:
- the client network (10.213.N.0/24): the services and the test connect to every node over it, and
  it is never cut;
- the route network (10.214.N.0/24): the cluster's routes. `partition(i)` takes node i's route link
  down, so it loses the others while its clients stay connected to it (the minority side); `heal(i)`
  brings it back.
Everything is removed by `stop()`. Needs root and iproute2 (`ip netns`); `available()` says so.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
import uuid

from tests.support.servers import Logins, nats_server_binary


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=30)


class NetnsNode:
    def __init__(self, ns: str, client_ip: str, route_ip: str, store_dir: str) -> None:
        self.ns, self.client_ip, self.route_ip, self.store_dir = ns, client_ip, route_ip, store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.client_ip}:4222"


class NetnsCluster(Logins):
    """Three nats-servers, each in a network namespace of its own, so one can be cut off. Open
    (no users): the partition test probes the nodes with streams of its own."""

    @staticmethod
    def available() -> bool:
        if os.geteuid() != 0 or not shutil.which("ip"):
            return False
        probe = f"abprobe{uuid.uuid4().hex[:6]}"
        if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
            return False
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return True

    def __init__(self, root: str, size: int = 3) -> None:
        self.root = root
        self.tag = uuid.uuid4().hex[:4]
        self.net = random.randrange(100, 250)
        self.client_bridge, self.route_bridge = f"ab{self.tag}c", f"ab{self.tag}r"
        self.nodes = [
            NetnsNode(
                f"agentbus-{self.tag}-n{i}",
                f"10.213.{self.net}.{10 + i}",
                f"10.214.{self.net}.{10 + i}",
                os.path.join(root, f"n{i}"),
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    def _route_link(self, i: int) -> str:
        return f"ab{self.tag}r{i}"  # the root side of node i's route link

    def start(self) -> NetnsCluster:
        try:
            self._make_network()
            routes = ",".join(f"nats://{n.route_ip}:6222" for n in self.nodes)
            for i, node in enumerate(self.nodes):
                os.makedirs(node.store_dir, exist_ok=True)
                node.proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node.ns,
                        nats_server_binary(),
                        "-a",
                        node.client_ip,
                        "-p",
                        "4222",
                        "-js",
                        "-sd",
                        node.store_dir,
                        "--name",
                        f"n{i}",
                        "--cluster_name",
                        "agentbus",
                        "--cluster",
                        f"nats://{node.route_ip}:6222",
                        "--routes",
                        routes,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            for node in self.nodes:
                self._wait_listening(node)
        except BaseException:
            self.stop()
            raise
        return self

    def _make_network(self) -> None:
        for bridge, prefix in ((self.client_bridge, "10.213"), (self.route_bridge, None)):
            _ip("link", "add", bridge, "type", "bridge")
            _ip("link", "set", bridge, "up")
            if prefix:
                _ip("addr", "add", f"{prefix}.{self.net}.1/24", "dev", bridge)
        for i, node in enumerate(self.nodes):
            subprocess.run(["ip", "netns", "add", node.ns], check=True, capture_output=True)
            _ip("link", "set", "lo", "up", ns=node.ns)
            for kind, bridge, addr in (
                ("c", self.client_bridge, node.client_ip),
                ("r", self.route_bridge, node.route_ip),
            ):
                outer, inner = f"ab{self.tag}{kind}{i}", f"ab{self.tag}{kind}{i}p"
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                _ip("link", "set", inner, "netns", node.ns)
                _ip("link", "set", outer, "master", bridge)
                _ip("link", "set", outer, "up")
                _ip("addr", "add", f"{addr}/24", "dev", inner, ns=node.ns)
                _ip("link", "set", inner, "up", ns=node.ns)

    def _wait_listening(self, node: NetnsNode, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"nats-server in {node.ns} exited with {node.proc.returncode}")
            with contextlib.suppress(OSError), socket.create_connection((node.client_ip, 4222), timeout=0.5):
                return
            time.sleep(0.05)
        raise TimeoutError(f"nothing listens on {node.url} after {timeout}s")

    def partition(self, i: int) -> None:
        _ip("link", "set", self._route_link(i), "down")

    def heal(self, i: int) -> None:
        _ip("link", "set", self._route_link(i), "up")

    def stop(self) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
                try:
                    node.proc.wait(10)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
        for i, node in enumerate(self.nodes):
            # Deleting the root ends deletes the pairs now, whenever the kernel frees the namespace.
            for kind in ("c", "r"):
                _ip("link", "del", f"ab{self.tag}{kind}{i}", check=False)
            subprocess.run(["ip", "netns", "del", node.ns], capture_output=True)
        for bridge in (self.client_bridge, self.route_bridge):
            _ip("link", "del", bridge, check=False)
