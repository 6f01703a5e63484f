"""What a settings class reads (`agentbus.common.settings`): its variables, found in the fields'
`Annotated[..., env(...)]` types, nested settings classes included, and what each allows, in words
(for errors and the README's settings table)."""

from __future__ import annotations

import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import msgspec


@dataclass(frozen=True)
class Variable:
    """One environment variable of a settings class (nested classes included)."""

    name: str
    path: tuple[str, ...]  # attribute path from the outer class, e.g. ("model", "timeout_s")
    type: Any  # the field's type without None and Annotated, e.g. int
    description: str
    allowed: str  # "an integer from 1 to 65535"
    default: Any
    default_doc: str | None
    secret: bool
    parse: Callable[[str], Any] | None

    def shown_default(self) -> str:
        """The default as documented: `8000`, `0.1`, or `unset`."""
        if self.default_doc is not None:
            return self.default_doc
        if self.default is None or self.default in ((), {}, ""):
            return "unset"
        return f"`{_number(self.default) if isinstance(self.default, int | float) else self.default}`"


def variables(cls: type[msgspec.Struct]) -> tuple[Variable, ...]:
    """Every variable `cls` reads, nested settings classes included, in field order."""
    return _variables(cls, ())


@cache
def _variables(cls: type[msgspec.Struct], prefix: tuple[str, ...]) -> tuple[Variable, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {f.name: f for f in msgspec.structs.fields(cls)}
    out: list[Variable] = []
    for name in cls.__struct_fields__:
        hint = hints[name]
        found = _find_meta(hint)
        if found is None:
            nested = _strip(hint)
            # A settings class inside another (EnvSettings: a Struct whose fields are settings).
            if isinstance(nested, type) and issubclass(nested, msgspec.Struct):
                out.extend(_variables(nested, (*prefix, name)))
                continue
            raise TypeError(f"{cls.__name__}.{name}: a setting needs env(...) in its Annotated type")
        meta, base = found
        extra = meta.extra or {}
        info = defaults[name]
        default = info.default_factory() if info.default is msgspec.NODEFAULT else info.default
        out.append(
            Variable(
                name=extra["env"],
                path=(*prefix, name),
                type=base,
                description=meta.description or "",
                allowed=extra.get("allowed") or _allowed(base, meta),
                default=default,
                default_doc=extra.get("default_doc"),
                secret=bool(extra.get("secret")),
                parse=extra.get("parse"),
            )
        )
    names = [v.name for v in out]
    if len(set(names)) != len(names):
        raise TypeError(f"{cls.__name__}: a variable is used twice: {names}")
    return tuple(out)


def own_variables(cls: type[msgspec.Struct]) -> tuple[Variable, ...]:
    return tuple(v for v in variables(cls) if len(v.path) == 1)


def _find_meta(hint: Any) -> tuple[msgspec.Meta, Any] | None:
    """The env(...) Meta in a field type (through Annotated and unions), and the type it annotates."""
    if typing.get_origin(hint) is Annotated:
        for meta in hint.__metadata__:
            if isinstance(meta, msgspec.Meta) and meta.extra and "env" in meta.extra:
                return meta, _strip(hint.__origin__)
        return _find_meta(hint.__origin__)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            found = _find_meta(arg)
            if found is not None:
                return found
    return None


def _strip(hint: Any) -> Any:
    """The type without Annotated and without None: `Annotated[str, ...] | None` -> str."""
    if typing.get_origin(hint) is Annotated:
        return _strip(hint.__origin__)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return hint


def _number(x: float) -> str:
    return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x)


def _allowed(base: Any, meta: msgspec.Meta) -> str:
    if base is bool:
        return "a boolean: 1, true, yes, on or 0, false, no, off"
    if base is int or base is float:
        noun = "an integer" if base is int else "a number"
        lo, hi = meta.ge, meta.le
        if lo is not None and hi is not None and meta.gt is None and meta.lt is None:
            return f"{noun} from {_number(lo)} to {_number(hi)}"
        bounds = [
            f"{op} {_number(v)}"
            for op, v in ((">", meta.gt), (">=", meta.ge), ("<", meta.lt), ("<=", meta.le))
            if v is not None
        ]
        return f"{noun} {' and '.join(bounds)}" if bounds else noun
    if base is str:
        if meta.pattern is not None:
            return f"a string matching {meta.pattern}"
        return "a non-empty string" if meta.min_length else "a string"
    return f"a {getattr(base, '__name__', base)}"
