"""Offline checks of the deployment files: services/*/Dockerfile, docker-compose.yml, deploy/k8s.

No Docker engine or cluster is needed: the files are parsed and checked against the
repository (workspace members, console scripts, the env names the services read).
`docker compose config`, `kubectl kustomize` and `nats-server -t` also run where the
tool is installed, and are skipped where it is not.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import subprocess
import tomllib
from functools import cache
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from agentbus.common import broker
from agentbus.common.settings import NatsAccess

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SERVICES = ("gateway", "runner", "metrics")

# The environment each service reads. LOG_LEVEL is read by every service (agentbus.common.logs).
# So are its NATS user and password and the TLS files (NatsAccess); the user and password come from
# var/broker/<service>.env (compose) or the Secret agentbus-nats-<service> (k8s), both written by
# agentbus.common.broker.
NATS_ACCESS_ENV = {"NATS_USER", "NATS_PASSWORD", "NATS_TLS_CA", "NATS_TLS_CERT", "NATS_TLS_KEY"}
COMMON_ENV = {"NATS_URL", "NATS_REPLICAS", "LOG_LEVEL"} | NATS_ACCESS_ENV
SERVICE_ENV = {
    "gateway": COMMON_ENV | {"DATABASE_URL", "GATEWAY_HOST", "GATEWAY_PORT", "AGENTBUS_ADMIN_TOKEN"},
    "runner": COMMON_ENV
    | {"RUNNER_MAX_CONCURRENCY", "RUNNER_GRACE_S", "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY"}
    | {"RUNNER_METRICS_HOST", "RUNNER_METRICS_PORT"},
    "metrics": COMMON_ENV | {"METRICS_DATABASE_URL", "METRICS_METRICS_HOST", "METRICS_METRICS_PORT"},
}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Where `make broker-users` writes the broker's users (auth.conf) and each user's <user>.env.
BROKER_DIR = "./var/broker"


def test_nats_access_env_is_what_the_services_read() -> None:
    assert {v.name for v in NatsAccess.variables()} == NATS_ACCESS_ENV


def env_file_keys(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


# --- Dockerfiles -----------------------------------------------------------------------------


def dockerfile(service: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in (ROOT / "services" / service / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        instr, _, args = (buf + stripped).partition(" ")
        out.append((instr.upper(), " ".join(args.split())))
        buf = ""
    return out


def stages(service: str) -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr, args in dockerfile(service):
        if instr == "FROM":
            result.append([])
        result[-1].append((instr, args))
    return result


def copy_sources(args: str) -> list[str]:
    """The build-context paths a COPY reads (none for COPY --from=<stage or image>)."""
    if "--from=" in args:
        return []
    words = [w for w in args.split() if not w.startswith("--")]
    return words[:-1]


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus `**`) as a regex over a relative path."""
    pattern, out, i = pattern.strip("/"), "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


@cache
def ignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, _ignore_regex(line.lstrip("!"))))
    return rules


def dockerignored(rel: str) -> bool:
    """Left out of the build context: the path or one of its parents matches (the last rule wins)."""
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    excluded = False
    for negated, rx in ignore_rules():
        if any(rx.match(p) for p in prefixes):
            excluded = not negated
    return excluded


def workspace_members() -> list[str]:
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    found = []
    for pattern in root["tool"]["uv"]["workspace"]["members"]:
        found += [p.parent for p in ROOT.glob(f"{pattern}/pyproject.toml")]
    return sorted(str(p.relative_to(ROOT)) for p in found)


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    for rel in [".git", ".venv", ".tools", "var", ".env", "libs/common/.venv", "tests/x/__pycache__"]:
        assert dockerignored(rel), rel
    for rel in ["uv.lock", "pyproject.toml", "libs/common/src/agentbus/common/db.py"]:
        assert not dockerignored(rel), rel


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_bases_user_signal_and_command(service: str) -> None:
    make_uv = re.search(r"^UV_VERSION \?= (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert make_uv, "UV_VERSION in the Makefile"
    froms = [stage[0][1].split()[0] for stage in stages(service)]
    assert froms[0] == f"ghcr.io/astral-sh/uv:{make_uv.group(1)}", "uv image pinned to the Makefile's uv"
    assert all(f.startswith("python:3.11-slim") for f in froms[1:]), froms
    final = dict(stages(service)[-1][1:])
    user = final.get("USER", "root").split(":")[0]
    assert user not in {"root", "0"}, "runs as a non-root user"
    assert final.get("STOPSIGNAL") == "SIGTERM"
    scripts = tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]
    assert f'"agentbus-{service}"' in final["CMD"]
    assert f"agentbus-{service}" in scripts["scripts"]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_installs_locked_deps_before_the_source(service: str) -> None:
    build = stages(service)[1]
    sync = f"uv sync --frozen --no-dev --package agentbus-{service}"
    runs = [i for i, (instr, args) in enumerate(build) if instr == "RUN" and sync in args]
    deps = [i for i in runs if "--no-install-workspace" in build[i][1]]
    code = [i for i in runs if "--no-editable" in build[i][1]]
    assert len(deps) == 1 and len(code) == 1 and deps[0] < code[0], build
    before = [s for instr, a in build[: deps[0]] if instr == "COPY" for s in copy_sources(a)]
    assert all(s in {"pyproject.toml", "uv.lock"} or s.endswith("/pyproject.toml") for s in before), before
    # uv reads the whole workspace, so every member's pyproject.toml must be there.
    assert {str(Path(s).parent) for s in before if s.endswith("/pyproject.toml")} == set(workspace_members())
    after = [s for instr, a in build[deps[0] : code[0]] if instr == "COPY" for s in copy_sources(a)]
    assert "libs/" in after and f"services/{service}/" in after
    assert not [s for s in after if s.startswith("services/") and s != f"services/{service}/"]


@pytest.mark.parametrize("service", SERVICES)
def test_dockerfile_copy_sources_exist_in_the_build_context(service: str) -> None:
    sources = [src for instr, args in dockerfile(service) if instr == "COPY" for src in copy_sources(args)]
    assert sources
    for src in sources:
        path = ROOT / src
        assert path.exists(), f"COPY {src}: not in the repository"
        assert not dockerignored(src), f"COPY {src}: excluded by .dockerignore"
        if path.is_dir():
            for needed in [*path.glob("*/pyproject.toml"), *path.glob("*/src"), *path.glob("src")]:
                assert not dockerignored(str(needed.relative_to(ROOT))), needed


def test_gateway_image_listens_on_8000_beyond_loopback() -> None:
    final = stages("gateway")[-1]
    env = " ".join(args for instr, args in final if instr == "ENV")
    assert "GATEWAY_HOST=0.0.0.0" in env and "GATEWAY_PORT=8000" in env
    assert ("EXPOSE", "8000") in final


# --- docker-compose.yml ----------------------------------------------------------------------


@cache
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def seconds(duration: str | int) -> float:
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unreadable duration {duration!r}"
    h, m, s = (int(x or 0) for x in parts.groups())
    return h * 3600 + m * 60 + s


def test_compose_builds_each_service_from_its_dockerfile() -> None:
    for service in SERVICES:
        build = compose()["services"][service]["build"]
        assert build["context"] == "."
        assert build["dockerfile"] == f"services/{service}/Dockerfile"
        assert (ROOT / build["dockerfile"]).is_file()


def test_compose_healthchecks() -> None:
    svc = compose()["services"]
    nats = svc["nats"]
    assert re.fullmatch(r"nats:2\.(1\d|[2-9]\d)(\.\d+)?-alpine", nats["image"]), nats["image"]
    assert {"-js", "-sd", "-m"} <= set(nats["command"]) and "8222" in nats["command"]
    assert "8222/healthz" in " ".join(nats["healthcheck"]["test"])
    assert svc["postgres"]["image"].startswith("postgres:16")
    assert "pg_isready" in svc["postgres"]["healthcheck"]["test"]
    gateway_check = " ".join(svc["gateway"]["healthcheck"]["test"])
    assert "python" in gateway_check and "urllib" in gateway_check and ":8000/health" in gateway_check


def test_compose_publishes_nothing_beyond_loopback_and_gateway_needs_a_token() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            host = port.get("host_ip") if isinstance(port, dict) else str(port).rsplit(":", 2)[0]
            assert host in LOOPBACK, f"{name} publishes {port} beyond loopback"
    gateway = compose()["services"]["gateway"]
    assert gateway["ports"], "the gateway is published (on loopback)"
    # It listens on 0.0.0.0 inside its container, so the token must be set: `:?` makes compose refuse.
    assert gateway["environment"]["GATEWAY_HOST"] == "0.0.0.0"
    assert gateway["environment"]["AGENTBUS_ADMIN_TOKEN"].startswith("${AGENTBUS_ADMIN_TOKEN:?")


def test_compose_start_order_and_restarts() -> None:
    svc = compose()["services"]
    for name, spec in svc.items():
        assert spec.get("restart") == "unless-stopped", name
    for service in SERVICES:
        deps = svc[service]["depends_on"]
        assert "nats" in deps, service
        assert all(d["condition"] == "service_healthy" for d in deps.values()), service
        assert all("healthcheck" in svc[d] for d in deps), service
    assert "postgres" in svc["gateway"]["depends_on"] and "postgres" in svc["metrics"]["depends_on"]


def test_compose_runner_scales_and_stops_gracefully() -> None:
    runner = compose()["services"]["runner"]
    assert "container_name" not in runner and "ports" not in runner
    grace = float(runner["environment"]["RUNNER_GRACE_S"])
    assert seconds(runner["stop_grace_period"]) > grace


def test_compose_env_names_are_the_services_own() -> None:
    for service in SERVICES:
        env = compose()["services"][service]["environment"]
        assert set(env) <= SERVICE_ENV[service], set(env) - SERVICE_ENV[service]
        assert "NATS_URL" in env


def secret_mounts(spec: dict) -> dict[str, str]:
    """Where a compose service's secrets are mounted: path -> secret name."""
    out = {}
    for entry in spec.get("secrets", []):
        source = entry if isinstance(entry, str) else entry["source"]
        target = source if isinstance(entry, str) else entry.get("target", source)
        out[target if target.startswith("/") else f"/run/secrets/{target}"] = source
    return out


def test_compose_nats_reads_the_users_from_a_secret() -> None:
    nats = compose()["services"]["nats"]
    command = nats["command"]
    assert command.count("-c") == 1, command
    config = command[command.index("-c") + 1]
    mounts = secret_mounts(nats)
    assert config in mounts, f"-c {config}: not a secret mounted in the nats container ({mounts})"
    assert compose()["secrets"][mounts[config]]["file"] == f"{BROKER_DIR}/auth.conf"
    # The generated passwords never reach an image.
    assert dockerignored(f"{BROKER_DIR}/auth.conf".removeprefix("./"))


def test_compose_each_service_logs_in_as_its_own_user(tmp_path: Path) -> None:
    broker.write(tmp_path)
    for service in SERVICES:
        spec = compose()["services"][service]
        assert spec["env_file"] == f"{BROKER_DIR}/{service}.env", service
        # Set here, they would override the file's.
        assert not {"NATS_USER", "NATS_PASSWORD"} & set(spec["environment"]), service
        written = env_file_keys(tmp_path / f"{service}.env")
        assert set(written) <= SERVICE_ENV[service] and written["NATS_USER"] == service
        assert dockerignored(spec["env_file"].removeprefix("./"))


def test_compose_databases() -> None:
    svc = compose()["services"]
    assert svc["postgres"]["environment"]["POSTGRES_DB"] == "gateway"
    assert urlsplit(svc["gateway"]["environment"]["DATABASE_URL"]).path == "/gateway"
    assert urlsplit(svc["metrics"]["environment"]["METRICS_DATABASE_URL"]).path == "/metrics"
    mounts = [v for v in svc["postgres"]["volumes"] if v.endswith("/docker-entrypoint-initdb.d:ro")]
    assert len(mounts) == 1
    init_dir = ROOT / mounts[0].split(":")[0]
    sql = " ".join(p.read_text() for p in init_dir.glob("*.sql"))
    assert re.search(r"CREATE DATABASE metrics\b", sql)
    for name in ("nats-data", "postgres-data"):
        assert name in compose()["volumes"]


def test_docker_compose_config_parses(tmp_path: Path) -> None:
    """The real parser, where the compose v2 plugin is installed (no engine needed)."""
    if (
        not shutil.which("docker")
        or subprocess.run(["docker", "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("no docker compose plugin here")
    # A project directory like the checkout (its entries linked) but with its own var/broker, and
    # an empty env file, so a developer's ./var and ./.env do not stand in for what is under test.
    project = tmp_path / "project"
    project.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in {"var", ".env"}:
            (project / entry.name).symlink_to(entry)
    (tmp_path / "empty.env").write_text("")
    args = ["docker", "compose", "--project-directory", str(project)]
    args += ["--env-file", str(tmp_path / "empty.env")]
    args += ["-f", str(ROOT / "docker-compose.yml"), "config", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "AGENTBUS_ADMIN_TOKEN"}
    token = env | {"AGENTBUS_ADMIN_TOKEN": "t"}
    # Without `make broker-users` compose stops, naming the missing file.
    no_users = subprocess.run(args, env=token, capture_output=True, text=True, timeout=60)
    assert no_users.returncode != 0 and re.search(r"var/broker/\w+\.env", no_users.stderr), no_users.stderr
    broker.write(project / "var" / "broker")
    ok = subprocess.run(args, env=token, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    no_token = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)
    assert no_token.returncode != 0 and "AGENTBUS_ADMIN_TOKEN" in no_token.stderr


# --- Kubernetes ------------------------------------------------------------------------------


@cache
def manifests() -> dict[str, list[dict]]:
    files = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in files}


def objects(kind: str | None = None) -> list[dict]:
    return [d for docs in manifests().values() for d in docs if kind is None or d["kind"] == kind]


def one(kind: str, name: str) -> dict:
    found = [d for d in objects(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def container(deployment: dict) -> dict:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


@cache
def broker_secrets() -> dict[str, dict]:
    """The Secrets `python -m agentbus.common.broker DIR --k8s` prints, by name (applied apart from
    the kustomization: they hold generated passwords)."""
    docs = yaml.safe_load_all(broker.k8s_secrets({user: "x" for user in broker.USERS}))
    return {d["metadata"]["name"]: d for d in docs if d}


def test_every_manifest_is_namespaced_and_listed_in_the_kustomization() -> None:
    assert manifests(), "deploy/k8s has manifests"
    for obj in objects():
        assert obj["apiVersion"] and obj["metadata"]["name"], obj
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "agentbus", obj["metadata"]["name"]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "agentbus"
    # The Secret template holds placeholders only: it is never applied by `kubectl apply -k`.
    assert set(kustomization["resources"]) == set(manifests()) - {"secret.example.yaml"}
    images = {c["image"].split(":")[0] for d in objects("Deployment") for c in [container(d)]}
    assert {i["name"] for i in kustomization["images"]} == images


def test_kustomize_renders() -> None:
    if not shutil.which("kubectl"):
        pytest.skip("no kubectl here")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
    assert kinds.count("Deployment") == 3 and "StatefulSet" in kinds and "Secret" not in kinds


@pytest.mark.parametrize(("service", "replicas"), [("gateway", 2), ("runner", 3), ("metrics", 1)])
def test_each_service_is_its_own_deployment(service: str, replicas: int) -> None:
    deployment = one("Deployment", service)
    assert deployment["spec"]["replicas"] == replicas
    pod = deployment["spec"]["template"]["spec"]
    assert container(deployment)["image"].startswith(f"agentbus-{service}:")
    # Service links would inject e.g. GATEWAY_PORT=tcp://... from the `gateway` Service.
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container(deployment)["resources"]["requests"]


def test_probes_on_health_and_ready_where_http_is_served() -> None:
    for deployment in objects("Deployment"):
        c = container(deployment)
        if not c.get("ports"):
            assert not any("httpGet" in c.get(p, {}) for p in ("livenessProbe", "readinessProbe"))
            continue
        port_names = {p.get("name") for p in c["ports"]} | {p["containerPort"] for p in c["ports"]}
        name = deployment["metadata"]["name"]
        # The gateway's own routes; the runner and the metrics service answer on their metrics port.
        live, ready = ("/health", "/ready") if name == "gateway" else ("/healthz", "/readyz")
        assert c["livenessProbe"]["httpGet"]["path"] == live
        assert c["readinessProbe"]["httpGet"]["path"] == ready
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if probe in c:
                assert c[probe]["httpGet"]["port"] in port_names
    gateway = container(one("Deployment", "gateway"))
    assert gateway["ports"][0]["containerPort"] == int(env_of(gateway)["GATEWAY_PORT"]["value"])
    service = one("Service", "gateway")
    assert service["spec"]["selector"].items() <= (
        one("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_runner_termination_grace_exceeds_its_handover_grace() -> None:
    runner = one("Deployment", "runner")
    grace = float(env_of(container(runner))["RUNNER_GRACE_S"]["value"])
    assert runner["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > grace


def test_k8s_env_names_config_and_secrets() -> None:
    config = one("ConfigMap", "agentbus-config")["data"]
    assert set(config) <= COMMON_ENV
    template = one("Secret", "agentbus-secrets")
    for service in SERVICES:
        c = container(one("Deployment", service))
        names = set(env_of(c))
        sources = c.get("envFrom", [])
        for source in sources:
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] == "agentbus-config"
                names |= set(config)
            else:
                # Its own NATS user: the Secret agentbus.common.broker generates for it.
                user = broker_secrets()[source["secretRef"]["name"]]
                assert user["metadata"]["namespace"] == "agentbus"
                assert user["stringData"]["NATS_USER"] == service
                names |= set(user["stringData"])
        assert {"secretRef": {"name": f"agentbus-nats-{service}"}} in sources, service
        assert names <= SERVICE_ENV[service], names - SERVICE_ENV[service]
        for name, entry in env_of(c).items():
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "agentbus-secrets" and ref["key"] in template["stringData"], name
    gateway = env_of(container(one("Deployment", "gateway")))
    if gateway["GATEWAY_HOST"]["value"] not in LOOPBACK:
        assert "secretKeyRef" in gateway["AGENTBUS_ADMIN_TOKEN"]["valueFrom"]


def test_secret_template_holds_placeholders_only() -> None:
    template = one("Secret", "agentbus-secrets")
    assert set(template["stringData"]) == {
        "DATABASE_URL",
        "METRICS_DATABASE_URL",
        "AGENTBUS_ADMIN_TOKEN",
        "OPENAI_API_KEY",
    }
    assert all("REPLACE_ME" in v for v in template["stringData"].values())
    assert "secret.yaml" in (K8S / ".gitignore").read_text().split()


def nats_conf() -> str:
    return one("ConfigMap", "nats-config")["data"]["nats.conf"]


def nats_mounts() -> dict[str, dict]:
    """The NATS container's mounts by path, each with its volume."""
    sts = one("StatefulSet", "nats")
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: volumes.get(m["name"], {}) for m in container(sts)["volumeMounts"]}


def nats_conf_path() -> str:
    command = container(one("StatefulSet", "nats"))["command"]
    return command[command.index("--config") + 1]


def nats_auth_path() -> str:
    """Where nats.conf's include of the users points, in the container (relative to nats.conf)."""
    includes = re.findall(r'^\s*include\s+"?([^"\s;]+)"?', nats_conf(), re.M)
    assert len(includes) == 1, includes
    return posixpath.normpath(posixpath.join(posixpath.dirname(nats_conf_path()), includes[0]))


def test_nats_reads_the_users_from_secret_nats_auth() -> None:
    mounts = nats_mounts()
    config_dir, name = posixpath.split(nats_conf_path())
    assert mounts[config_dir]["configMap"]["name"] == "nats-config" and name == "nats.conf"
    auth_dir, key = posixpath.split(nats_auth_path())
    assert mounts.get(auth_dir, {}).get("secret", {}).get("secretName") == "nats-auth", (auth_dir, mounts)
    assert key in broker_secrets()["nats-auth"]["stringData"]
    # Not generated here: kept out of the kustomization (test_kustomize_renders: no Secret).
    assert "nats-auth" not in {s["metadata"]["name"] for s in objects("Secret")}


def test_nats_is_a_three_server_jetstream_cluster() -> None:
    sts = one("StatefulSet", "nats")
    replicas = sts["spec"]["replicas"]
    assert replicas == 3 == int(one("ConfigMap", "agentbus-config")["data"]["NATS_REPLICAS"])
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    headless = one("Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"]
    conf = nats_conf()
    for i in range(replicas):
        assert f"nats://nats-{i}.{headless['metadata']['name']}:6222" in conf
    store = re.search(r"store_dir:\s*(\S+)", conf)
    assert store, "JetStream file storage"
    mounts = {m["name"]: m["mountPath"] for m in container(sts)["volumeMounts"]}
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    assert any(mounts.get(claim) == store.group(1) for claim in claims), "store_dir on a persistent volume"
    client = urlsplit(one("ConfigMap", "agentbus-config")["data"]["NATS_URL"])
    assert client.hostname == one("Service", "nats")["metadata"]["name"] and client.port == 4222


def test_nats_config_is_accepted_by_nats_server(tmp_path: Path) -> None:
    from tests.support.servers import nats_server_binary

    try:
        binary = nats_server_binary()
    except RuntimeError:
        pytest.skip("no nats-server here")
    # Laid out as in the container, so the include of auth.conf resolves as it does there.
    conf = tmp_path / nats_conf_path().lstrip("/")
    conf.parent.mkdir(parents=True)
    conf.write_text(nats_conf())

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary, "-t", "-c", str(conf)],
            env={"POD_NAME": "nats-0"},
            capture_output=True,
            text=True,
            timeout=30,
        )

    missing = check()
    assert missing.returncode != 0 and "auth.conf" in missing.stdout + missing.stderr
    broker.write(tmp_path / posixpath.dirname(nats_auth_path()).lstrip("/"))
    out = check()
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("service", "prefix"), [("runner", "RUNNER"), ("metrics", "METRICS")])
def test_runner_and_metrics_serve_probes_and_are_scraped_on_their_metrics_port(
    service: str, prefix: str
) -> None:
    deployment = one("Deployment", service)
    c = container(deployment)
    env = env_of(c)
    port = int(env[f"{prefix}_METRICS_PORT"]["value"])
    assert env[f"{prefix}_METRICS_HOST"]["value"] == "0.0.0.0"  # the kubelet and Prometheus reach it
    assert [p["containerPort"] for p in c["ports"] if p["name"] == "metrics"] == [port]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] == "metrics"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
