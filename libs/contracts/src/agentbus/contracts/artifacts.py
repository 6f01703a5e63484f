"""What an artifact may be called and say it is: one rule for the runner that stores it and the
gateway that indexes and serves it."""

import re

# A file name, not a path: no separators, no control characters, not "." or "..".
_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,200}\Z")
# `type/subtype` with optional parameters, on one line (no CR/LF that could split a header).
_CONTENT_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}(;[ -~]{0,200})?\Z")


def valid_artifact_name(name: str) -> bool:
    return bool(_NAME.match(name)) and name not in (".", "..")


def valid_content_type(content_type: str) -> bool:
    return bool(_CONTENT_TYPE.match(content_type))
