"""An agentbus plug-in: the agent kind `team`, a planner, a coder and a reviewer over one model."""

from agentbus_team.agent import TeamAgent, TeamConfig
from agentbus_team.team import Role, Team

__all__ = ["Role", "Team", "TeamAgent", "TeamConfig"]
