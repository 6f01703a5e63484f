"""Typed settings read from the environment: one msgspec Struct per service.

A settings class subclasses `EnvSettings`; each field names its environment
variable and its constraints in one `Annotated[..., env(...)]`:

    class Settings(EnvSettings, frozen=True, kw_only=True):
        port: Annotated[int, env("GATEWAY_PORT", "port it listens on", ge=1, le=65535)] = 8000

`Settings.from_env()` reads only the variables that are set and not blank
(surrounding whitespace is dropped), converts them with msgspec (`"8000"` ->
8000) and checks every constraint; a bad value raises `SettingsError`, whose
message is one line naming the variable, the value given and what is allowed:

    GATEWAY_PORT=99999: must be an integer from 1 to 65535

Building a settings object directly (`Settings(port=...)`, as tests do) checks
the same constraints. A field marked `secret=True` never shows its value in an
error or a repr (a URL keeps its scheme, user, host and path; its password and
query are replaced by `***`). Booleans accept 1/0, true/false, yes/no, on/off
in any case. Numbers must be finite (`inf` and `nan` are refused).

A field whose type is itself an `EnvSettings` class (the runner's model
defaults) is read from its own variables. A variable whose value is not a
scalar (JSON, `kind=n,...` lists) names a `parse` function: its ValueError
becomes a SettingsError naming the variable, and its result is then checked
against the field's type like any other value. Rules that span several fields
(one setting requires another) live in the class's `validate()`, run after
every field is checked, from the environment or in code alike.

A service that cannot start with its settings says why in one line on stderr
and exits with `EXIT_CONFIG` (78, EX_CONFIG of sysexits.h), the one exit code
that means "the configuration is wrong: starting again changes nothing";
`exit_on_bad_settings` does both. `make run` stops everything when a service
exits with it, and a process manager can be told not to restart on it
(systemd's `RestartPreventExitStatus=78`).
"""

from __future__ import annotations

import contextvars
import math
import os
import re
import socket
import sys
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, NoReturn

import msgspec

from agentbus.common.masking import mask_url, secret_repr
from agentbus.common.settings_fields import Variable, own_variables, variables

__all__ = [
    "DB_URL_ALLOWED",
    "DB_URL_PATTERN",
    "EXIT_CONFIG",
    "EnvSettings",
    "LogFormat",
    "LogLevel",
    "NatsAccess",
    "NatsReplicas",
    "NatsUrl",
    "SettingsError",
    "Variable",
    "env",
    "exit_on_bad_settings",
    "mask_url",
    "variables",
]


def default_instance() -> str:
    """A process's name among its service's copies: host and pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class SettingsError(ValueError):
    """A setting is not allowed. The message is one line, names the variable and never shows a secret."""


# The exit code of a service refused by its own settings (EX_CONFIG): restarting it is pointless.
EXIT_CONFIG = 78


def exit_on_bad_settings(program: str, error: SettingsError) -> NoReturn:
    """End a service that its settings do not allow: one line on stderr, exit code EXIT_CONFIG."""
    print(f"{program}: invalid configuration: {error}", file=sys.stderr, flush=True)
    sys.exit(EXIT_CONFIG)


def env(
    name: str,
    description: str,
    *,
    secret: bool = False,
    parse: Callable[[str], Any] | None = None,
    allowed: str | None = None,
    default_doc: str | None = None,
    **constraints: Any,
) -> msgspec.Meta:
    """The Meta of one setting: its variable `name`, what it means, and msgspec constraints
    (`ge`, `gt`, `le`, `lt`, `pattern`, `min_length`, ...).

    allowed: what is allowed, in words, when the constraints alone do not say it well (a pattern).
    default_doc: the default as the README shows it, when it is computed at start (`<hostname>-<pid>`).
    """
    extra = {"env": name, "secret": secret, "parse": parse, "allowed": allowed, "default_doc": default_doc}
    return msgspec.Meta(description=description, extra=extra, **constraints)


# --- shared variables ---------------------------------------------------------------------------

# Every service reads these; the README lists them once, as "all".
NatsUrl = Annotated[
    str,
    env(
        "NATS_URL",
        "NATS server(s) to connect to; comma-separated for a cluster",
        secret=True,  # nats://user:password@host
        min_length=1,
    ),
]
NatsReplicas = Annotated[
    int, env("NATS_REPLICAS", "JetStream replicas of the streams and buckets it creates", ge=1, le=5)
]
LogLevel = Annotated[
    str,
    env(
        "LOG_LEVEL",
        "logging level",
        pattern=r"(?i)^(debug|info|warning|error|critical)$",
        allowed="one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case)",
    ),
]
LogFormat = Annotated[
    str,
    env(
        "LOG_FORMAT",
        "log line format: `json` (one JSON object a line), `text` (for a person), or `auto`: text "
        "when stderr is a terminal, JSON otherwise",
        pattern=r"(?i)^(auto|json|text)$",
        allowed="one of auto, json, text (any case)",
    ),
]
# normalize_url in agentbus.common.db accepts these: plain or with an explicit driver.
DB_URL_PATTERN = r"^(sqlite|postgres|postgresql)(\+\w+)?://"
DB_URL_ALLOWED = "a sqlite:/// or postgresql:// URL"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_checking: contextvars.ContextVar[bool] = contextvars.ContextVar("agentbus_settings_checking", default=False)
_PATH = re.compile(r" - at `\$((?:\.[A-Za-z_]\w*)*)")
_PLAIN = re.compile(r"[A-Za-z0-9_.:/@+*-]+")


class EnvSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Base of the services' settings classes."""

    def __post_init__(self) -> None:
        if not _checking.get():  # not while from_env (or this check) is converting
            _check(self)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> typing.Self:
        return load(cls, env)

    def validate(self) -> None:
        """Rules across fields, once every field holds an allowed value: raise SettingsError
        (naming the variable, its value unless secret, and what is allowed). None by default."""

    @classmethod
    def variables(cls) -> tuple[Variable, ...]:
        return variables(cls)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self._shown())})"

    def __rich_repr__(self) -> Iterator[tuple[str, Any]]:
        for name, text in self._shown():
            yield name, _Raw(text)

    def _shown(self) -> list[tuple[str, str]]:
        secret = {v.path[-1] for v in own_variables(type(self)) if v.secret}
        out = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            out.append((name, secret_repr(value) if name in secret else repr(value)))
        return out


class NatsAccess(EnvSettings, frozen=True, kw_only=True):
    """How a service proves itself to the broker, and how it checks the broker in turn. Every
    service reads these; `make run` sets the user and password of each (see agentbus.common.broker)."""

    user: Annotated[str, env("NATS_USER", "its NATS user", min_length=1)] | None = None
    password: (
        Annotated[str, env("NATS_PASSWORD", "that user's password", secret=True, min_length=1)] | None
    ) = None
    tls_ca: (
        Annotated[
            str,
            env(
                "NATS_TLS_CA",
                "CA certificate file that the broker's TLS certificate must be signed by; set: TLS "
                "is required (a `tls://` NATS_URL requires it too, checked against the system's CAs)",
                min_length=1,
            ),
        ]
        | None
    ) = None
    tls_cert: (
        Annotated[
            str, env("NATS_TLS_CERT", "client certificate file, for a broker that asks for one", min_length=1)
        ]
        | None
    ) = None
    tls_key: Annotated[str, env("NATS_TLS_KEY", "the client certificate's key file", min_length=1)] | None = (
        None
    )


class _Raw:
    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


T = typing.TypeVar("T", bound="EnvSettings")


def load(cls: type[T], env: Mapping[str, str] | None = None, defaults: Mapping[str, Any] | None = None) -> T:
    """`cls` from the environment (os.environ when env is None).

    defaults: values of top-level fields to use when their variable is not set, for defaults
    computed at start that differ from the class's own (the gateway's instance name).
    """
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    given: dict[str, str] = {}  # variable -> the (stripped) text it was given
    for var in variables(cls):
        raw = (env.get(var.name) or "").strip()
        if not raw:
            continue
        given[var.name] = raw
        if var.parse is not None:
            try:
                value = var.parse(raw)
            except (ValueError, TypeError) as exc:
                raise SettingsError(_problem(var, raw, str(exc))) from None
        elif var.type is bool:
            low = raw.lower()
            if low not in _TRUE | _FALSE:
                raise SettingsError(_problem(var, raw))
            value = low in _TRUE
        else:
            value = raw
        node = values
        for part in var.path[:-1]:
            node = node.setdefault(part, {})
        node[var.path[-1]] = value
    for key, value in (defaults or {}).items():
        values.setdefault(key, value)
    token = _checking.set(True)
    try:
        obj = msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise _from_validation(cls, exc, given, values) from None
    finally:
        _checking.reset(token)
    _check_finite(obj, given)
    obj.validate()
    return obj


def _check(obj: EnvSettings) -> None:
    """The constraints of a settings object built directly (not from the environment)."""
    cls = type(obj)
    token = _checking.set(True)
    try:
        msgspec.convert(msgspec.to_builtins(obj), cls)
    except msgspec.ValidationError as exc:
        raise _from_validation(cls, exc, {}, obj) from None
    finally:
        _checking.reset(token)
    _check_finite(obj, {})
    obj.validate()


def _check_finite(obj: Any, given: Mapping[str, str]) -> None:
    for var in variables(type(obj)):
        value = _get(obj, var.path)
        if var.type is float and isinstance(value, int | float) and not math.isfinite(value):
            raise SettingsError(_problem(var, given.get(var.name, str(value))))


def _from_validation(
    cls: type[EnvSettings], exc: msgspec.ValidationError, given: Mapping[str, str], values: Any
) -> SettingsError:
    match = _PATH.search(str(exc))
    path = tuple(match.group(1).split(".")[1:]) if match else ()
    candidates = [v for v in variables(cls) if path[: len(v.path)] == v.path]
    if not candidates:
        # Not a field's value (a class-level problem): msgspec's messages name types, not values.
        return SettingsError(f"invalid {cls.__name__}: {exc}")
    var = max(candidates, key=lambda v: len(v.path))
    raw = given.get(var.name)
    if raw is None:  # a value given in code, or a computed default
        raw = str(_get(values, var.path))
    return SettingsError(_problem(var, raw))


def _get(obj: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        obj = obj.get(part) if isinstance(obj, Mapping) else getattr(obj, part, None)
    return obj


def _problem(var: Variable, raw: str, detail: str = "") -> str:
    text = f"{var.name}{_shown_value(raw, var.secret)}: must be {var.allowed}"
    return f"{text} ({_one_line(detail)})" if detail else text


def _shown_value(raw: str, secret: bool) -> str:
    if secret:
        masked = mask_url(raw)
        return " (value hidden)" if masked is None else f"={masked}"
    if len(raw) > 120:
        raw = raw[:117] + "..."
    return f"={raw}" if _PLAIN.fullmatch(raw) else f"={raw!r}"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."
