"""Agents the runner can execute: the protocol, the context they get, and the registry of kinds."""

from agentbus.runner.agents.base import (
    Agent,
    AgentConfigError,
    AgentContext,
    AgentError,
    ArtifactLimitError,
    Usage,
    convert_config,
    step_title,
)
from agentbus.runner.agents.registry import ENTRY_POINT_GROUP, AgentRegistry, UnknownAgentError
from agentbus.runner.agents.scripted import ScriptedAgent, ScriptedConfig

__all__ = [
    "ENTRY_POINT_GROUP",
    "Agent",
    "AgentConfigError",
    "AgentContext",
    "AgentError",
    "AgentRegistry",
    "ArtifactLimitError",
    "ScriptedAgent",
    "ScriptedConfig",
    "UnknownAgentError",
    "Usage",
    "convert_config",
    "step_title",
]
