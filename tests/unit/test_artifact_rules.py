"""One rule for artifact names and content types, shared by the runner and the gateway."""

import pytest

from agentbus.contracts.artifacts import valid_artifact_name, valid_content_type


@pytest.mark.parametrize("name", ["result.json", "report v2.pdf", "données.csv", "a" * 200])
def test_file_names_are_valid(name: str) -> None:
    assert valid_artifact_name(name)


@pytest.mark.parametrize("name", ["", ".", "..", "../../x", "a/b", "a\\b", "tab\there", "nul\x00", "a" * 201])
def test_paths_and_control_characters_are_not(name: str) -> None:
    assert not valid_artifact_name(name)


@pytest.mark.parametrize(
    "ct", ["text/plain", "application/json", "text/plain; charset=utf-8", "image/svg+xml"]
)
def test_content_types_are_valid(ct: str) -> None:
    assert valid_content_type(ct)


@pytest.mark.parametrize("ct", ["", "text", "text/plain\r\nSet-Cookie: a=b", "text/plain\n", "a b/c"])
def test_broken_content_types_are_not(ct: str) -> None:
    assert not valid_content_type(ct)
