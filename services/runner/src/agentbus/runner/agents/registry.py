"""Agent kinds: the built-in ones plus any registered under the entry point group `agentbus.agents`."""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

from agentbus.runner.agents.base import Agent, AgentConfigError
from agentbus.runner.agents.scripted import ScriptedAgent

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentbus.agents"
BUILTIN: dict[str, type[Agent]] = {ScriptedAgent.kind: ScriptedAgent}


class UnknownAgentError(AgentConfigError):
    pass


class AgentRegistry:
    """Name -> Agent class. Plugins are loaded once; a plugin that fails to import is logged and skipped."""

    def __init__(self, extra: dict[str, type[Agent]] | None = None, plugins: bool = True) -> None:
        self._kinds: dict[str, type[Agent]] = dict(BUILTIN)
        if plugins:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    self._kinds[ep.name] = ep.load()
                except Exception as exc:  # a broken plugin must not take the runner down
                    log.error("agent plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
        self._kinds.update(extra or {})

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def create(self, kind: str) -> Agent:
        cls = self._kinds.get(kind)
        if cls is None:
            raise UnknownAgentError(f"unknown agent kind {kind!r}; available: {', '.join(self.kinds())}")
        return cls()
