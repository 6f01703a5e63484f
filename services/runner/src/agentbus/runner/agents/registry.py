"""Agent kinds: the built-in ones plus any registered under the entry point group `agentbus.agents`."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from importlib.metadata import entry_points

from agentbus.contracts import AGENT_KIND_MAX_LENGTH, AgentDescriptor, valid_agent_kind
from agentbus.runner.agents.base import Agent, AgentConfigError
from agentbus.runner.agents.openai import OpenAIAgent
from agentbus.runner.agents.scripted import ScriptedAgent

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "agentbus.agents"
BUILTIN: dict[str, type[Agent]] = {ScriptedAgent.kind: ScriptedAgent, OpenAIAgent.kind: OpenAIAgent}


class UnknownAgentError(AgentConfigError):
    pass


class AgentRegistry:
    """Name -> Agent class. Plugins are loaded once; a plugin that fails to import is logged and skipped.

    `only`: serve just these kinds (RUNNER_AGENTS); a listed kind that is not installed is an error.
    """

    def __init__(
        self,
        extra: dict[str, type[Agent]] | None = None,
        plugins: bool = True,
        only: Iterable[str] | None = None,
    ) -> None:
        kinds: dict[str, type[Agent]] = dict(BUILTIN)
        if plugins:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                try:
                    kinds[ep.name] = ep.load()
                except Exception as exc:  # a broken plugin must not take the runner down
                    log.error("agent plugin %r (%s) failed to load: %s", ep.name, ep.value, exc)
        kinds.update(extra or {})
        for name in [k for k in kinds if not valid_agent_kind(k)]:
            # The kind becomes subject tokens and part of a consumer name: the contracts' rule.
            log.error(
                "agent kind %r skipped: a kind is dot-separated [A-Za-z0-9_-] words, at most %d characters",
                name,
                AGENT_KIND_MAX_LENGTH,
            )
            del kinds[name]
        if only is not None:
            wanted = list(only)
            missing = [k for k in wanted if k not in kinds]
            if missing:
                raise ValueError(f"RUNNER_AGENTS names kinds that are not installed: {', '.join(missing)}")
            kinds = {k: kinds[k] for k in wanted}
        self._kinds = kinds

    def kinds(self) -> list[str]:
        return sorted(self._kinds)

    def create(self, kind: str) -> Agent:
        cls = self._kinds.get(kind)
        if cls is None:
            raise UnknownAgentError(f"unknown agent kind {kind!r}; available: {', '.join(self.kinds())}")
        return cls()

    def describe(self, kind: str) -> AgentDescriptor:
        cls = self._kinds[kind]
        try:
            schema = cls.config_schema()
        except Exception as exc:  # a plugin's odd config type must not break discovery
            log.warning("agent %s: no config schema: %s", kind, exc)
            schema = None
        doc = (cls.__doc__ or "").strip().splitlines()
        return AgentDescriptor(
            kind=kind,
            description=cls.description or (doc[0] if doc else ""),
            config_schema=schema,
            supports_resume=cls.supports_resume,
        )
