"""One agent-kind rule (agentbus.contracts.kinds): the gateway's task fields, the runner's registry and
the `run.start.<kind>` subjects accept exactly the same names."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

import msgspec
import pytest

from agentbus.contracts import subjects, valid_agent_kind
from agentbus.gateway.schemas import TaskCreate, TaskUpdate
from agentbus.runner.agents import ENTRY_POINT_GROUP, Agent, AgentRegistry
from agentbus.runner.agents import registry as registry_module

SHIPPED = ["scripted", "openai", "team"]  # built in, and examples/agent-team's plug-in
ACCEPTED = [*SHIPPED, "my-kind", "a_b", "team.v2", "Crew.AI-2", "a.b.c", "_", "9", "x" * 100]
REFUSED = [
    "",
    ".",
    "a.",
    ".a",
    "a..b",
    "a b",
    "a*",
    "a.>",
    ">",
    "run.start.*",
    "a/b",
    "a:b",
    "scripted\n",
    "\nscripted",
    "a\tb",
    "é",
    "x" * 101,
]


def gateway_accepts(struct: type, body: dict[str, Any]) -> bool:
    try:
        msgspec.json.decode(msgspec.json.encode(body), type=struct)  # what the gateway does with a body
    except msgspec.ValidationError:
        return False
    return True


@pytest.mark.parametrize("kind", ACCEPTED + REFUSED)
def test_the_gateway_accepts_exactly_what_the_contract_rule_accepts(kind: str) -> None:
    assert valid_agent_kind(kind) is (kind in ACCEPTED)
    assert gateway_accepts(TaskCreate, {"name": "t", "agent": kind}) is valid_agent_kind(kind)
    assert gateway_accepts(TaskUpdate, {"agent": kind}) is valid_agent_kind(kind)


def test_only_strings_are_kinds() -> None:
    assert not any(valid_agent_kind(x) for x in (None, 1, ["scripted"], b"scripted"))


def test_every_kind_the_project_ships_follows_the_rule() -> None:
    installed = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert set(SHIPPED) <= set(AgentRegistry().kinds()) | installed
    assert all(valid_agent_kind(kind) for kind in [*AgentRegistry().kinds(), *installed])


class NamedAgent(Agent):
    pass


@pytest.mark.parametrize("kind", REFUSED)
def test_a_kind_the_rule_refuses_cannot_be_registered_by_the_runner(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert AgentRegistry({kind: NamedAgent, "fine.kind": NamedAgent}, plugins=False).kinds() == [
        "fine.kind",
        "openai",
        "scripted",
    ]
    plugins = [EntryPoint(kind, f"{__name__}:NamedAgent", ENTRY_POINT_GROUP)]
    monkeypatch.setattr(
        registry_module, "entry_points", lambda group: plugins if group == ENTRY_POINT_GROUP else []
    )
    assert AgentRegistry().kinds() == ["openai", "scripted"]
    with pytest.raises(ValueError, match="not a valid agent kind"):
        subjects.run_start(kind)
    with pytest.raises(ValueError, match="not a valid agent kind"):
        subjects.kind_consumer(kind)


def test_subjects_of_accepted_kinds() -> None:
    assert subjects.run_start("team.v2") == "run.start.team.v2"
    assert subjects.kind_consumer("scripted") == "runners-scripted"
    assert subjects.kind_consumer("team.v2").startswith("runners-team_v2-")
