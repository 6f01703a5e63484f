"""agentbus runner: executes agent runs pulled from the `run.start.<kind>` work queues."""

from agentbus.runner.service import Runner, running
from agentbus.runner.settings import Settings

__all__ = ["Runner", "Settings", "running"]
