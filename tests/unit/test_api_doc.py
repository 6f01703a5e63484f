"""docs/api.md: its generated sections match the code, its close codes are the gateway's, and its
links stay inside the repository."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest

from agentbus.gateway import access
from agentbus.gateway.streams import routes, subscription

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"


@cache
def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_api_doc", ROOT / "scripts" / "gen_api_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@cache
def sections() -> dict[str, str]:
    return generator().render()


def test_generated_sections_are_up_to_date() -> None:
    text = DOC.read_text()
    assert generator().update(text, sections()) == text, (
        "docs/api.md is stale: run python scripts/gen_api_doc.py"
    )


def test_every_route_and_stream_is_in_the_tables() -> None:
    gen = generator()
    gw = gen.gateway()
    table = sections()["routes"] + sections()["streams"]
    for (method, path), _role in gen.roles(gw).items():
        if method in ("OPTIONS", "HEAD") or not (
            path.startswith(("/api/", "/ws/")) or path in ("/health", "/ready", "/metrics")
        ):
            continue
        assert f"`{path}`" in table, f"{method} {path} is missing from docs/api.md"


def test_roles_are_the_handlers() -> None:
    """A route's role column says what `Access.authorize` asks for."""
    table = sections()["routes"]
    assert "| POST | `/api/runs/{run_id}/approve` | - | approver |" in table
    assert "| POST | `/api/keys` | - | admin |" in table
    assert "| GET | `/health` | - | none |" in table
    assert "| GET | `/api/me` | - | any identity |" in table


@pytest.mark.parametrize(
    "code",
    [
        access.CLOSE_UNAUTHORIZED,
        access.CLOSE_FORBIDDEN,
        access.CLOSE_TOO_MANY,
        routes.CLOSE_BAD_REQUEST,
        routes.CLOSE_NOT_FOUND,
        subscription.CLOSE_TOO_SLOW,
        subscription.CLOSE_GOING_AWAY,
    ],
)
def test_every_close_code_is_in_the_close_code_table(code: int) -> None:
    table = DOC.read_text().split("How a WebSocket ends, by close code:", 1)[1].split("\n\n", 2)[1]
    assert f"\n| {code} |" in "\n" + table, f"close code {code} is missing from docs/api.md"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


@pytest.mark.parametrize("page", ["docs/api.md", "README.md"])
def test_links_stay_inside_the_repository_and_resolve(page: str) -> None:
    source = ROOT / page
    text = re.sub(r"```.*?```", "", source.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (source.parent / path).resolve() if path else source
        assert resolved.is_relative_to(ROOT), f"{page} links outside the repository: {target}"
        assert resolved.exists(), f"{page} links to a missing file: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page}: no heading for {target}"
