"""`make bench`: agentbus's benchmarks against the real services, with baselines measured alongside.

Run `python -m bench --help` for the options. Load comes from separate
processes (`bench.httpload`, `bench.wsload`, `bench.publish`, `bench.runload`),
never from the process that starts the services.
"""
