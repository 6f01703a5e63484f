"""agentbus metrics service: turns finished runs into metrics and answers queries over NATS."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("agentbus-metrics")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
