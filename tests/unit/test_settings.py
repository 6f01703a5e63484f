"""The services' settings: validated from the environment, errors that name the variable, the README table."""

from __future__ import annotations

import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import pytest

from agentbus.common.settings import EXIT_CONFIG, EnvSettings, SettingsError, env, mask_url
from agentbus.gateway.settings import Settings as GatewaySettings
from agentbus.metrics.settings import Settings as MetricsSettings
from agentbus.runner.settings import ModelDefaults
from agentbus.runner.settings import Settings as RunnerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = {"gateway": GatewaySettings, "runner": RunnerSettings, "metrics": MetricsSettings}


def error(cls: type[EnvSettings], env: dict[str, str]) -> str:
    with pytest.raises(SettingsError) as info:
        cls.from_env(env)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GATEWAY_PORT": "99999"}, "GATEWAY_PORT=99999: must be an integer from 1 to 65535"),
        ({"GATEWAY_PORT": "0"}, "GATEWAY_PORT=0: must be an integer from 1 to 65535"),
        ({"REAPER_AFTER_S": "-5"}, "REAPER_AFTER_S=-5: must be a number > 0"),
        ({"WS_QUEUE_SIZE": "1k"}, "WS_QUEUE_SIZE=1k: must be an integer >= 1"),
        ({"WS_HEARTBEAT_S": "inf"}, "WS_HEARTBEAT_S=inf: must be a number > 0"),
        ({"GATEWAY_DELETE_WAIT_S": "nan"}, "GATEWAY_DELETE_WAIT_S=nan: must be a number >= 0"),
        ({"GATEWAY_DB_POOL_SIZE": "101"}, "GATEWAY_DB_POOL_SIZE=101: must be an integer from 1 to 100"),
        ({"NATS_REPLICAS": "6"}, "NATS_REPLICAS=6: must be an integer from 1 to 5"),
        (
            {"LOG_LEVEL": "loud"},
            "LOG_LEVEL=loud: must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)",
        ),
        (
            {"GATEWAY_HOST": "  ", "GATEWAY_PORT": "8.5"},
            "GATEWAY_PORT=8.5: must be an integer from 1 to 65535",
        ),
    ],
)
def test_gateway_bad_value_names_variable_value_and_range(env: dict[str, str], message: str) -> None:
    assert error(GatewaySettings, env) == message


def test_runner_and_metrics_bad_values() -> None:
    assert error(RunnerSettings, {"RUNNER_GRACE_S": "-1"}) == "RUNNER_GRACE_S=-1: must be a number >= 0"
    # A nested field (the model defaults) is named by its own variable.
    assert error(RunnerSettings, {"OPENAI_TIMEOUT_S": "0"}) == "OPENAI_TIMEOUT_S=0: must be a number > 0"
    assert error(RunnerSettings, {"OPENAI_MAX_RETRIES": "-1"}).startswith("OPENAI_MAX_RETRIES=-1: ")
    assert error(RunnerSettings, {"OPENAI_BASE_URL": "api.example"}) == (
        "OPENAI_BASE_URL=api.example: must be an http:// or https:// URL"
    )
    assert error(MetricsSettings, {"METRICS_DB_POOL_SIZE": "0"}) == (
        "METRICS_DB_POOL_SIZE=0: must be an integer from 1 to 100"
    )
    # The messages the existing tests rely on still match, and SettingsError is a ValueError.
    with pytest.raises(ValueError, match="NATS_REPLICAS"):
        MetricsSettings.from_env({"NATS_REPLICAS": "zero"})


def test_complex_values_name_their_variable() -> None:
    limits = "kind=limit pairs like openai=4,team=2, each limit an integer >= 1"
    assert error(RunnerSettings, {"RUNNER_AGENT_CONCURRENCY": "openai=0"}) == (
        f"RUNNER_AGENT_CONCURRENCY='openai=0': must be {limits}"
    )
    assert error(RunnerSettings, {"RUNNER_AGENT_CONCURRENCY": "a=1,b"}).startswith(
        f"RUNNER_AGENT_CONCURRENCY='a=1,b': must be {limits} ("
    )
    prices = error(RunnerSettings, {"RUNNER_MODEL_PRICES": '{"m": {"prompt": -1, "completion": 0}}'})
    assert prices.startswith("RUNNER_MODEL_PRICES='{") and "must be a JSON object like" in prices
    assert "negative price for m" in prices
    assert "RUNNER_MODEL_PRICES=" in error(RunnerSettings, {"RUNNER_MODEL_PRICES": "{not json\n}"})
    assert error(RunnerSettings, {"RUNNER_AGENTS": ",,"}).startswith(
        "RUNNER_AGENTS=',,': must be comma-separated"
    )


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(SettingsError, match=r"^GATEWAY_PORT=99999: must be an integer from 1 to 65535$"):
        GatewaySettings(port=99999)
    with pytest.raises(SettingsError, match="RUNNER_MAX_CONCURRENCY=0"):
        RunnerSettings(max_concurrency=0)
    with pytest.raises(SettingsError, match="OPENAI_TIMEOUT_S=0"):
        ModelDefaults(timeout_s=0)
    with pytest.raises(SettingsError, match="RUNNER_AGENT_CONCURRENCY"):
        RunnerSettings(agent_concurrency={"openai": 0})
    with pytest.raises(SettingsError, match="RUNNER_MODEL_PRICES"):
        ModelDefaults(prices={"m": (-1.0, 0.0)})
    # What the integration tests build.
    s = RunnerSettings(nats_url="nats://n:1", runner_id="r", fetch_timeout_s=0.5, grace_s=2)
    assert (s.grace_s, s.fetch_timeout_s) == (2, 0.5)
    g = GatewaySettings(nats_url="nats://n:1", database_url="sqlite:///x.db", max_body_bytes=65536)
    assert g.instance == "gateway" and g.max_body_bytes == 65536
    assert RunnerSettings(model=ModelDefaults(prices={"m*": (1.0, 2.0)})).model.price("m1") == (1.0, 2.0)


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_never_appear_in_errors_or_reprs() -> None:
    token = error(GatewaySettings, {"AGENTBUS_API_TOKEN": "s3cret token"})
    assert token == (
        "AGENTBUS_API_TOKEN (value hidden): must be printable ASCII without spaces, at least 16 characters"
    )
    key = error(RunnerSettings, {"OPENAI_API_KEY": "sk-s3cret\u00e9"})
    assert "s3cret" not in key and key.startswith("OPENAI_API_KEY (value hidden): ")
    db = error(GatewaySettings, {"DATABASE_URL": "mysql://app:s3cret@db:3306/x?password=s3cret"})
    assert db == "DATABASE_URL=mysql://app:***@db:3306/x?***: must be a sqlite:/// or postgresql:// URL"
    bare = error(MetricsSettings, {"METRICS_DATABASE_URL": "s3cret"})
    assert bare == "METRICS_DATABASE_URL (value hidden): must be a sqlite:/// or postgresql:// URL"
    with pytest.raises(SettingsError) as info:
        GatewaySettings(api_token="s3cret token")
    assert "s3cret" not in str(info.value) and "s3cret" not in repr(info.value)

    g = GatewaySettings.from_env(
        {
            "AGENTBUS_API_TOKEN": "s3cret-token-0123",
            "DATABASE_URL": "postgresql://app:s3cret@db/gw",
            "NATS_URL": "nats://user:s3cret@nats:4222",
        }
    )
    assert g.api_token == "s3cret-token-0123" and g.database_url == "postgresql://app:s3cret@db/gw"
    text = repr(g)
    assert "s3cret" not in text and "api_token='***'" in text
    assert "database_url='postgresql://app:***@db/gw'" in text
    r = RunnerSettings.from_env({"OPENAI_API_KEY": "sk-s3cret"})
    assert r.model.api_key == "sk-s3cret" and "s3cret" not in repr(r) and "s3cret" not in str(r)


def test_mask_url() -> None:
    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u:p/w@h/db") == "postgresql://u:***@h/db"  # an unescaped / in it
    assert mask_url("nats://token@h:4222") == "nats://***@h:4222"
    assert mask_url("postgresql://h/db?password=pw") == "postgresql://h/db?***"
    assert mask_url("sqlite+aiosqlite:///./var/x.db") == "sqlite+aiosqlite:///./var/x.db"
    assert mask_url("not a url") is None


# --- valid values -------------------------------------------------------------------------------


def test_defaults_from_an_empty_environment() -> None:
    for cls in SERVICES.values():
        for var in cls.variables():
            if var.default_doc is None:  # not computed at start
                for built in (cls.from_env({}), cls()):
                    value = built
                    for part in var.path:
                        value = getattr(value, part)
                    assert value == var.default, var.name
    g = GatewaySettings.from_env({})
    assert (g.host, g.port, g.api_token, g.ws_queue_size, g.delete_wait_s, g.ingest_batch) == (
        "127.0.0.1",
        8000,
        None,
        1000,
        5.0,
        500,
    )
    assert (g.db_pool_size, g.db_read_connections, g.log_level) == (6, 8, "INFO")
    assert g.instance == f"{socket.gethostname()}-{os.getpid()}" and GatewaySettings().instance == "gateway"
    assert MetricsSettings.from_env({}).db_pool_size == 10
    # Empty and blank values count as unset.
    assert GatewaySettings.from_env({"GATEWAY_PORT": "", "WS_QUEUE_SIZE": "  "}).port == 8000


def test_a_valid_environment_round_trip() -> None:
    g = GatewaySettings.from_env(
        {
            "NATS_URL": "nats://n1:4222,nats://n2:4222",
            "DATABASE_URL": "postgresql://u:p@db/gw",
            "GATEWAY_HOST": "0.0.0.0",
            "GATEWAY_PORT": " 8080 ",
            "AGENTBUS_API_TOKEN": "t0k-of-sixteen-chars",
            "NATS_REPLICAS": "3",
            "MAX_BODY_BYTES": "2048",
            "WS_HEARTBEAT_S": "2.5",
            "WS_QUEUE_SIZE": "10",
            "DEFAULT_AGENT": "openai",
            "GATEWAY_INSTANCE": "gw-1",
            "GATEWAY_REQUEST_TIMEOUT_S": "1",
            "GATEWAY_DELETE_WAIT_S": "0",
            "GATEWAY_INGEST_BATCH": "50",
            "REAPER_AFTER_S": "30",
            "REAPER_INTERVAL_S": "0.5",
            "GATEWAY_DB_POOL_SIZE": "4",
            "GATEWAY_DB_READ_CONNECTIONS": "2",
            "LOG_LEVEL": "debug",
        }
    )
    assert g == GatewaySettings(
        nats_url="nats://n1:4222,nats://n2:4222",
        database_url="postgresql://u:p@db/gw",
        host="0.0.0.0",
        port=8080,
        api_token="t0k-of-sixteen-chars",
        nats_replicas=3,
        max_body_bytes=2048,
        ws_heartbeat_s=2.5,
        ws_queue_size=10,
        default_agent="openai",
        instance="gw-1",
        request_timeout_s=1.0,
        delete_wait_s=0.0,
        ingest_batch=50,
        reaper_after_s=30.0,
        reaper_interval_s=0.5,
        db_pool_size=4,
        db_read_connections=2,
        log_level="debug",
    )
    assert isinstance(g.port, int) and isinstance(g.request_timeout_s, float)
    assert g.auth_on  # a token: may listen beyond loopback
    assert error(GatewaySettings, {"GATEWAY_HOST": "0.0.0.0"}).startswith("GATEWAY_HOST=0.0.0.0: must be")

    r = RunnerSettings.from_env(
        {
            "RUNNER_AGENTS": "openai, team",
            "RUNNER_AGENT_CONCURRENCY": "openai=4, team=2",
            "RUNNER_MODEL_PRICES": '{"gpt-4o-mini": {"prompt": 0.15, "completion": 0.6}, "llama*": [0, 0]}',
            "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "OPENAI_MODEL": "m",
            "OPENAI_TIMEOUT_S": "5",
            "OPENAI_MAX_RETRIES": "0",
            "RUNNER_PROGRESS_INTERVAL_S": "0",
            "RUNNER_HEARTBEAT_S": "1e-1",
        }
    )
    assert r.agents == ("openai", "team") and r.agent_concurrency == {"openai": 4, "team": 2}
    assert r.model.price("llama3") == (0.0, 0.0) and r.model.price("gpt-4o-mini") == (0.15, 0.6)
    assert (r.model.base_url, r.model.model, r.model.timeout_s, r.model.max_retries) == (
        "http://127.0.0.1:9/v1",
        "m",
        5.0,
        0,
    )
    assert (r.progress_interval_s, r.heartbeat_s) == (0.0, 0.1)


def test_every_variable_is_read_from_the_environment() -> None:
    """A value for each variable reaches its attribute (no variable listed but never read)."""
    samples = {int: "3", float: "7.5", str: None}
    for cls in SERVICES.values():
        for var in cls.variables():
            if var.parse is not None or var.type not in samples:
                continue
            raw = samples[var.type] or {
                "DATABASE_URL": "sqlite:///x.db",
                "METRICS_DATABASE_URL": "sqlite:///x.db",
                "LOG_LEVEL": "ERROR",
                "LOG_FORMAT": "json",
                "OPENAI_BASE_URL": "https://x",
                "AGENTBUS_ADMIN_TOKEN": "x7-at-least-sixteen",
                "AGENTBUS_API_TOKEN": "x7-at-least-sixteen",
                "JWT_JWKS_URL": "https://idp.example/jwks.json",
                "GATEWAY_HOST": "127.0.0.2",  # loopback: elsewhere it would need authentication
            }.get(var.name, "x7")
            # A JWT key is accepted with an issuer and an audience only.
            jwt = {"JWT_ISSUER": "https://idp.example", "JWT_AUDIENCE": "agentbus"}
            value = cls.from_env({**(jwt if var.name in ("JWT_KEY", "JWT_JWKS_URL") else {}), var.name: raw})
            for part in var.path:
                value = getattr(value, part)
            assert value == var.type(raw), var.name


def test_booleans() -> None:
    class Flags(EnvSettings, frozen=True, kw_only=True):
        on: Annotated[bool, env("TEST_FLAG", "a flag")] = False

    for raw in ("1", "true", "TRUE", "yes", "On"):
        assert Flags.from_env({"TEST_FLAG": raw}).on is True
    for raw in ("0", "false", "No", "off"):
        assert Flags.from_env({"TEST_FLAG": raw}).on is False
    assert error(Flags, {"TEST_FLAG": "maybe"}) == (
        "TEST_FLAG=maybe: must be a boolean: 1, true, yes, on or 0, false, no, off"
    )


def test_a_field_without_a_variable_is_refused() -> None:
    class Bad(EnvSettings, frozen=True, kw_only=True):
        x: int = 1

    with pytest.raises(TypeError, match="needs env"):
        Bad.variables()
    for cls in SERVICES.values():  # the real classes are complete
        assert cls.variables()


# --- the service processes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("service", "variable", "value"),
    [
        ("gateway", "GATEWAY_PORT", "99999"),
        ("runner", "RUNNER_GRACE_S", "-1"),
        ("metrics", "NATS_REPLICAS", "0"),
        ("gateway", "GATEWAY_HOST", "0.0.0.0"),  # beyond loopback without authentication
    ],
)
def test_a_bad_setting_stops_the_process_with_one_line(service: str, variable: str, value: str) -> None:
    # NATS and the database point at a listening socket: a process that connected would show there.
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.setblocking(False)
        port = trap.getsockname()[1]
        env = {
            **os.environ,
            "NATS_URL": f"nats://127.0.0.1:{port}",
            "DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{port}/db",
            "METRICS_DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{port}/db",
            variable: value,
        }
        for name in (
            "AGENTBUS_ADMIN_TOKEN",
            "AGENTBUS_API_TOKEN",
            "JWT_KEY",
            "JWT_JWKS_URL",
            "ALLOW_INSECURE",
        ):
            env.pop(name, None)
        started = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", f"agentbus.{service}"], env=env, capture_output=True, text=True, timeout=60
        )
        took = time.monotonic() - started
        with pytest.raises(BlockingIOError):
            trap.accept()
    assert proc.returncode == EXIT_CONFIG, proc.stderr  # "do not start it again"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"agentbus-{service}: invalid configuration: {variable}={value}: must be ")
    assert took < 30


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("GATEWAY_PORT", "99999", "an integer from 1 to 65535"),
        ("NATS_PORT", "x", "an integer from 1 to 65535"),
        ("AGENTBUS_API_TOKEN", "short", "printable ASCII without spaces, at least 16 characters"),
    ],
)
def test_make_run_stops_on_a_bad_setting_in_one_line(
    tmp_path, variable: str, value: str, allowed: str
) -> None:  # type: ignore[no-untyped-def]
    var = tmp_path / "var"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run.py")],
        env={**os.environ, "AGENTBUS_VAR": str(var), variable: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CONFIG and "Traceback" not in proc.stderr, proc.stderr
    shown = " (value hidden)" if variable == "AGENTBUS_API_TOKEN" else f"={value}"
    assert proc.stderr.strip() == f"make run: invalid configuration: {variable}{shown}: must be {allowed}"
    assert not proc.stdout and not var.exists(), "nothing was started"


# --- the README table ---------------------------------------------------------------------------


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen_settings_doc", ROOT / "scripts" / "gen_settings_doc.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def readme_table() -> dict[str, list[str]]:
    """variable -> [service, default, allowed, meaning], from README.md's Configuration table."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, list[str]] = {}
    for line in section.splitlines():
        m = re.fullmatch(r"\| `([A-Z][A-Z0-9_]*)` \|(.*)\|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} is listed twice"
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def test_readme_table_matches_the_settings_classes() -> None:
    table = readme_table()
    services_of: dict[str, set[str]] = {}
    for service, cls in SERVICES.items():
        for var in cls.variables():
            services_of.setdefault(var.name, set()).add(service)
            assert var.name in table, f"{var.name} ({service}) is missing from README.md's settings table"
            _, default, allowed, meaning = table[var.name]
            assert default == var.shown_default(), f"{var.name}: README says {default}"
            assert allowed == var.allowed and meaning == var.description, var.name
    for name, cells in table.items():
        if name in services_of:
            shown = {"all"} if services_of[name] == set(SERVICES) else services_of[name]
            assert set(cells[0].split(", ")) == shown, f"{name}: README says {cells[0]}"
    # The rest are read by scripts/run.py (`make run`), and only those.
    run_py = set(
        re.findall(
            r'(?:os\.environ\.get|port_setting)\("([A-Z_]+)"', (ROOT / "scripts" / "run.py").read_text()
        )
    )
    extra = set(table) - set(services_of)
    assert extra <= run_py, f"in README.md's table but read by nothing: {extra - run_py}"
    assert extra == run_py - set(services_of)
    assert table["NATS_PORT"][1] == "`4222`"


def test_readme_table_is_generated_and_up_to_date() -> None:
    readme = (ROOT / "README.md").read_text()
    assert _generator().update(readme) == readme, "run: python scripts/gen_settings_doc.py"


JWT = {"JWT_ISSUER": "https://idp.example", "JWT_AUDIENCE": "agentbus"}


def test_authentication_switches_and_safe_defaults() -> None:
    off = GatewaySettings.from_env({})
    assert not off.auth_on and off.admin_credential is None
    assert off.auth_summary().startswith("authentication is off: listening on loopback (127.0.0.1) only")
    for env_ in (
        {"AGENTBUS_ADMIN_TOKEN": "an-admin-token-0123"},
        {"AGENTBUS_API_TOKEN": "a-legacy-token-0123"},
        {"JWT_KEY": "a-shared-secret", **JWT},
        {"JWT_JWKS_URL": "https://idp.example/.well-known/jwks.json", **JWT},
    ):
        on = GatewaySettings.from_env({**env_, "GATEWAY_HOST": "0.0.0.0"})  # beyond loopback: allowed
        assert on.auth_on, env_
        assert on.auth_summary().startswith("authentication is on"), env_
    both = GatewaySettings.from_env(
        {"AGENTBUS_ADMIN_TOKEN": "new-admin-token-0123", "AGENTBUS_API_TOKEN": "old-admin-token-0123"}
    )
    assert both.admin_credential == "new-admin-token-0123"
    # Beyond loopback without authentication: refused, naming the variable, unless ALLOW_INSECURE=1.
    assert error(GatewaySettings, {"GATEWAY_HOST": "10.0.0.5"}) == (
        "GATEWAY_HOST=10.0.0.5: must be a loopback address (127.0.0.1, ::1, localhost) while "
        "authentication is off: set AGENTBUS_ADMIN_TOKEN (or JWT_KEY / JWT_JWKS_URL), or "
        "ALLOW_INSECURE=1 to let anyone who reaches the port do anything"
    )
    with pytest.raises(SettingsError, match=r"GATEWAY_HOST=0\.0\.0\.0"):
        GatewaySettings(host="0.0.0.0")  # built in code: the same rule
    insecure = GatewaySettings.from_env({"GATEWAY_HOST": "10.0.0.5", "ALLOW_INSECURE": "1"})
    assert insecure.auth_summary() == (
        "authentication is off and ALLOW_INSECURE=1: listening on 10.0.0.5, where anyone who reaches "
        "the port may do anything"
    )
    assert GatewaySettings.from_env({"GATEWAY_HOST": "::1"}).host == "::1"
    # The former name is held to the same length as the new one.
    assert error(GatewaySettings, {"AGENTBUS_API_TOKEN": "legacy"}) == (
        "AGENTBUS_API_TOKEN (value hidden): must be printable ASCII without spaces, at least 16 characters"
    )


@pytest.mark.parametrize(
    "source", [{"JWT_KEY": "s3cret-shared-key"}, {"JWT_JWKS_URL": "https://idp.example/k"}]
)
def test_a_jwt_needs_an_issuer_and_an_audience(source: dict[str, str]) -> None:
    name = next(iter(source))
    assert error(GatewaySettings, source) == (
        f"JWT_ISSUER is unset: must be set when {name} is set (the `iss` claim every accepted JWT must carry)"
    )
    assert error(GatewaySettings, {**source, "JWT_ISSUER": "https://idp.example"}) == (
        f"JWT_AUDIENCE is unset: must be set when {name} is set (the `aud` claim every accepted JWT "
        "must carry)"
    )
    message = error(GatewaySettings, {**source, "JWT_AUDIENCE": "agentbus"})
    assert message.startswith("JWT_ISSUER is unset") and "s3cret" not in message
    with pytest.raises(SettingsError, match="JWT_ISSUER is unset"):
        GatewaySettings(jwt_key="s3cret-shared-key", jwt_audience="agentbus")  # built in code alike
    g = GatewaySettings.from_env({**source, **JWT})
    assert (g.jwt_issuer, g.jwt_audience) == ("https://idp.example", "agentbus")
    assert g.auth_summary() == (
        "authentication is on: every request needs credentials (JWTs from https://idp.example for agentbus)"
    )


def test_more_safe_defaults() -> None:
    assert error(GatewaySettings, {"AGENTBUS_ADMIN_TOKEN": "short"}) == (
        "AGENTBUS_ADMIN_TOKEN (value hidden): must be printable ASCII without spaces, at least 16 characters"
    )
    assert error(GatewaySettings, {"JWT_ALGORITHMS": "none"}).startswith("JWT_ALGORITHMS=none: must be")
    assert GatewaySettings.from_env({"JWT_ALGORITHMS": "ES256, EdDSA"}).jwt_algorithms == ("ES256", "EdDSA")
    assert error(GatewaySettings, {"GATEWAY_WRITE_RATE": "0"}).startswith("GATEWAY_WRITE_RATE=0")
