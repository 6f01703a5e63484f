"""Who may say what on the broker: one NATS user per service, with the subjects it may publish and
subscribe to, and the nats-server configuration that enforces them.

A service that is not allowed a subject cannot use it whatever it sends: the broker refuses the
message. So a runner may publish run events and checkpoints but not decisions, starts or
cancels; only the gateway publishes starts and decisions; only the metrics service can receive
(and so answer) metrics requests; only runners receive discovery requests (so no one else can
advertise agent kinds), and a runner only the nats.micro discovery of every service or of its own
(`agentbus-runner`); and no service may delete or purge a stream or a durable consumer.
Replies go to per-service inboxes (`_INBOX_<service>.>`), which no other service can read.

`python -m agentbus.common.broker DIR` writes, under DIR, `auth.conf` (the `authorization`
block: a nats-server config on its own, `nats-server -c auth.conf -js ...`, or included by a
larger one) and `<user>.env` (NATS_USER, NATS_PASSWORD) for each service and for `operator` (a person
looking on: dead letters, live events, stream state; it may publish nothing), with new random
passwords unless DIR already holds them; `--k8s` prints the same as Kubernetes Secrets too.
`make run` does this under ./var/broker. With users defined, the broker refuses a connection
without a known user and password.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from agentbus.contracts import subjects as s

SERVICES = ("gateway", "runner", "metrics")
# A person looking on: reads dead letters, live events and heartbeats, and the streams' state;
# says nothing.
OPERATOR = "operator"
USERS = (*SERVICES, OPERATOR)
KV = f"$KV.{s.RUN_STATE_BUCKET}"
KV_STREAM = f"KV_{s.RUN_STATE_BUCKET}"
OBJ = f"$O.{s.ARTIFACTS_BUCKET}"
OBJ_STREAM = f"OBJ_{s.ARTIFACTS_BUCKET}"
STREAMS = (s.RUN_COMMANDS_STREAM, s.EVENTS_STREAM, s.LIFECYCLE_STREAM, KV_STREAM, OBJ_STREAM)
MICRO = "$SRV.>"  # nats.micro: discovery requests to every service (PING, INFO, STATS)
METRICS_REQUESTS = (
    s.METRICS_QUERY,
    s.METRICS_GET,
    s.METRICS_RUN_SUMMARY,
    s.METRICS_TASK_SUMMARY,
    s.METRICS_PING,
    s.METRICS_REPORT,
    s.METRICS_SERIES,
    s.METRICS_CREATE,
)


def inbox_prefix(service: str) -> str:
    """Where a service's replies arrive: its own prefix, which only it may subscribe to."""
    return f"_INBOX_{service}"


def micro_discovery(name: str) -> list[str]:
    """The nats.micro discovery requests a service named `name` answers: those to every service
    (`$SRV.PING`) and those to its name (`$SRV.PING.<name>[.<id>]`), not another service's."""
    verbs = [f"$SRV.{verb}" for verb in ("PING", "INFO", "STATS")]
    return [*verbs, f"$SRV.*.{name}", f"$SRV.*.{name}.*"]


def _consumers(stream: str, *names: str) -> list[str]:
    """The JetStream API calls that create, look up and pull from consumers of a stream (all of
    its consumers when no name is given)."""
    tails = names or ("*",)
    # A named consumer is created (or its config changed) at `CREATE.<stream>.<name>[.<filter>]`:
    # a service may touch its own only, so it cannot redirect another's.
    heads = [f"$JS.API.CONSUMER.CREATE.{stream}.{n}" for n in names] or [f"$JS.API.CONSUMER.CREATE.{stream}"]
    out = [subject for head in heads for subject in (head, f"{head}.>")]
    for tail in tails:
        out += [
            f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{tail}",
            f"$JS.API.CONSUMER.INFO.{stream}.{tail}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{tail}",
        ]
    return out


def _acks(stream: str, consumer: str) -> str:
    return f"$JS.ACK.{stream}.{consumer}.>"


# Every service: look streams up, create them (an existing one with another config is left as
# it is; creating cannot remove anything), and read the run state bucket.
_COMMON_API = [
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.INFO.*",
    *(f"$JS.API.STREAM.CREATE.{name}" for name in STREAMS),
    f"$JS.API.STREAM.MSG.GET.{KV_STREAM}",
    f"$JS.API.DIRECT.GET.{KV_STREAM}",
    f"$JS.API.DIRECT.GET.{KV_STREAM}.>",
    s.EVENTS_DEAD,
]


@dataclass(frozen=True)
class Permissions:
    publish: list[str]
    subscribe: list[str]
    responds: bool = False  # may answer requests it receives (allow_responses)

    def block(self) -> dict[str, object]:
        out: dict[str, object] = {
            "publish": {"allow": self.publish},
            "subscribe": {"allow": self.subscribe},
        }
        if self.responds:
            out["allow_responses"] = True
        return out


def permissions(service: str) -> Permissions:
    own_inbox = f"{inbox_prefix(service)}.>"
    # Push consumers created before per-service inboxes deliver to `_INBOX.<id>`; no reply goes
    # there any more, so allowing it reveals nothing.
    legacy_deliver = "_INBOX.>"
    if service == "gateway":
        return Permissions(
            publish=[
                *_COMMON_API,
                f"{s.RUN_START_KIND_PREFIX}.>",
                f"{s.RUN_WAKE_KIND_PREFIX}.>",
                s.RUN_CONTROL_ALL,
                s.RUN_PING,
                s.RUN_INFO,
                s.RUN_DELETED,
                s.TASK_DELETED,
                *METRICS_REQUESTS,
                s.EVENTS_LIVE_ALL,
                s.EVENTS_RUN_ALL,  # the reaper ends a run no runner holds (`failure`, or by its policy)
                f"{KV}.*.start",
                f"{KV}.*.decision",
                f"{KV}.*.cancel",
                f"{KV}.*.state",  # the reaper fences a checkpoint
                f"{OBJ}.M.>",  # deleting a run's artifacts
                # Brings the streams up to date after an upgrade (the others only create them).
                *(f"$JS.API.STREAM.UPDATE.{name}" for name in STREAMS),
                f"$JS.API.STREAM.PURGE.{OBJ_STREAM}",  # an artifact's chunks, when deleted
                f"$JS.API.STREAM.MSG.GET.{OBJ_STREAM}",
                f"$JS.API.DIRECT.GET.{OBJ_STREAM}",
                f"$JS.API.DIRECT.GET.{OBJ_STREAM}.>",
                *_consumers(s.EVENTS_STREAM, s.GATEWAY_EVENTS_CONSUMER),
                *_consumers(OBJ_STREAM),  # reading an artifact (an ordered consumer)
                f"$JS.API.CONSUMER.DELETE.{OBJ_STREAM}.*",
                _acks(s.EVENTS_STREAM, s.GATEWAY_EVENTS_CONSUMER),
                f"$JS.FC.{OBJ_STREAM}.>",
            ],
            subscribe=[own_inbox, legacy_deliver, s.EVENTS_LIVE_ALL, s.RUN_HEARTBEAT],
        )
    if service == "runner":
        return Permissions(
            publish=[
                *_COMMON_API,
                s.EVENTS_RUN_ALL,
                s.RUN_HEARTBEAT,
                s.RUN_PING,  # its own subscriptions are in place once it hears itself answer
                f"{KV}.*.state",
                f"{OBJ}.>",  # storing artifacts
                f"$JS.API.STREAM.PURGE.{OBJ_STREAM}",  # an artifact stored again replaces its chunks
                f"$JS.API.STREAM.MSG.GET.{OBJ_STREAM}",
                f"$JS.API.DIRECT.GET.{OBJ_STREAM}",
                f"$JS.API.DIRECT.GET.{OBJ_STREAM}.>",
                *_consumers(s.RUN_COMMANDS_STREAM),
                f"$JS.API.CONSUMER.LIST.{s.RUN_COMMANDS_STREAM}",
                f"$JS.ACK.{s.RUN_COMMANDS_STREAM}.>",
            ],
            # Its ping and info endpoints, and the nats.micro discovery of its service.
            subscribe=[
                own_inbox,
                s.RUN_CONTROL_ALL,
                s.RUN_PING,
                s.RUN_INFO,
                *micro_discovery(s.RUNNER_SERVICE),
            ],
            responds=True,
        )
    if service == "metrics":
        return Permissions(
            publish=[
                *_COMMON_API,
                *_consumers(s.EVENTS_STREAM, s.METRICS_EVENTS_CONSUMER),
                *_consumers(s.LIFECYCLE_STREAM, s.METRICS_LIFECYCLE_CONSUMER),
                _acks(s.EVENTS_STREAM, s.METRICS_EVENTS_CONSUMER),
                _acks(s.LIFECYCLE_STREAM, s.METRICS_LIFECYCLE_CONSUMER),
            ],
            # `$SRV.>`: the nats.micro discovery subjects (PING, INFO, STATS) it answers.
            subscribe=[own_inbox, legacy_deliver, *METRICS_REQUESTS, MICRO],
            responds=True,
        )
    if service == OPERATOR:
        return Permissions(
            publish=[
                "$JS.API.INFO",
                "$JS.API.STREAM.NAMES",
                "$JS.API.STREAM.INFO.*",
                "$JS.API.CONSUMER.INFO.>",
                MICRO,  # `nats micro ls|info|stats`: the services' discovery and endpoint stats
            ],
            subscribe=[own_inbox, s.EVENTS_DEAD, s.EVENTS_LIVE_ALL, s.RUN_HEARTBEAT],
        )
    raise ValueError(f"unknown service {service!r}")


def authorization(passwords: Mapping[str, str]) -> str:
    """The nats-server `authorization` block: one user per service, nobody else."""
    users = [
        {"user": service, "password": passwords[service], "permissions": permissions(service).block()}
        for service in USERS
    ]
    # JSON is valid nats-server configuration syntax.
    return "authorization: " + json.dumps({"users": users}, indent=2) + "\n"


def read_passwords(directory: Path) -> dict[str, str]:
    """The passwords of DIR's `<service>.env` files; new random ones for those missing."""
    out = {}
    for service in USERS:
        path = directory / f"{service}.env"
        found = None
        if path.exists():
            for line in path.read_text().splitlines():
                if line.startswith("NATS_PASSWORD="):
                    found = line.split("=", 1)[1].strip()
        out[service] = found or secrets.token_urlsafe(32)
    return out


def write(directory: Path) -> dict[str, str]:
    """`auth.conf` and `<service>.env` under `directory` (mode 0600); returns the passwords."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    passwords = read_passwords(directory)
    _private(directory / "auth.conf", authorization(passwords))
    for service in USERS:
        _private(directory / f"{service}.env", f"NATS_USER={service}\nNATS_PASSWORD={passwords[service]}\n")
    return passwords


def _private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


def k8s_secrets(passwords: Mapping[str, str], namespace: str = "agentbus") -> str:
    """The same as Kubernetes Secrets: `nats-auth` (auth.conf, for the NATS pods) and
    `agentbus-nats-<service>` (NATS_USER, NATS_PASSWORD, for each service's pods)."""
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "nats-auth", "namespace": namespace},
            "stringData": {"auth.conf": authorization(passwords)},
        }
    ]
    for service in USERS:
        docs.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": f"agentbus-nats-{service}", "namespace": namespace},
                "stringData": {"NATS_USER": service, "NATS_PASSWORD": passwords[service]},
            }
        )
    return "".join("---\n" + json.dumps(doc, indent=2) + "\n" for doc in docs)  # JSON is YAML


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agentbus.common.broker",
        description="Write the broker's users and each service's credentials (see this module's docstring).",
    )
    parser.add_argument("directory", type=Path, help="where auth.conf and <service>.env are kept")
    parser.add_argument("--k8s", action="store_true", help="print them as Kubernetes Secrets too")
    args = parser.parse_args(argv)
    passwords = write(args.directory)
    print(f"wrote {args.directory}/auth.conf and " + ", ".join(f"{x}.env" for x in USERS), file=sys.stderr)
    if args.k8s:
        sys.stdout.write(k8s_secrets(passwords))
    return 0


if __name__ == "__main__":
    sys.exit(main())
