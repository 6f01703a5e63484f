"""docs/reliability.md holds one section per command; a run rewrites its own and keeps the other's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "reliability_report", ROOT / "scripts" / "reliability_report.py"
)
assert _spec is not None and _spec.loader is not None
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def test_each_command_rewrites_only_its_own_section() -> None:
    page = report.merged("", "make reliability", "## `make reliability`\n\nfirst")
    page = report.merged(page, "make soak", "## `make soak`\n\nlong")
    page = report.merged(page, "make reliability", "## `make reliability`\n\nsecond")
    assert page.startswith(report.TITLE)
    assert "second" in page and "first" not in page and "long" in page
    assert page.index("make reliability`") < page.index("make soak`")  # the order is kept
    assert report.merged(page, "make soak", "## `make soak`\n\nlong") == page


def test_the_committed_page_has_both_sections() -> None:
    page = (ROOT / "docs" / "reliability.md").read_text()
    assert "<!-- make reliability -->" in page and "<!-- make soak -->" in page
