"""The agentbus gateway: REST + WebSocket in front of the bus."""

__version__ = "0.1.0"
