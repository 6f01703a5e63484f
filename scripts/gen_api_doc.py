"""Write the generated sections of docs/api.md from the code that serves the API.

- the routes: the OpenAPI document the gateway's app builds in-process (`Gateway(...).app
  .openapi_schema`, the document `GET /openapi.json` serves), with the role each handler needs
  (`agentbus.gateway.access`: a handler's `opt`, else viewer for a read and admin otherwise);
- the WebSocket streams: the app's WebSocket routes (OpenAPI does not describe them);
- the errors: what each status means (`agentbus.gateway.errors.WHY`, the document's texts);
- the objects: the schemas of the same document, the request bodies as the routes take them
  (every field, its type, default and bounds);
- the event types and the run stats: `agentbus.contracts.events`, with the status each event
  moves a run to (`agentbus.contracts.status`).

Nothing starts: the app is built, never served, and connects nowhere.
`python scripts/gen_api_doc.py` rewrites the sections between their markers;
`--check` only says whether they are up to date. tests/unit/test_api_doc.py fails when
docs/api.md and the code disagree.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from litestar.routes import HTTPRoute, WebSocketRoute

from agentbus.contracts.events import EVENT_CLASSES, TERMINAL_EVENT_TYPES, RunStats
from agentbus.contracts.status import STATUS_AFTER_EVENT
from agentbus.gateway.access import OPEN_PATHS, READS
from agentbus.gateway.app import Gateway
from agentbus.gateway.errors import WHY
from agentbus.gateway.settings import Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
METHODS = ("get", "post", "patch", "put", "delete")
_OPEN = re.compile(OPEN_PATHS)
_PARAM = re.compile(r"\{(\w+):\w+\}")


def gateway() -> Gateway:
    """The gateway as `create_app()` builds it, from default settings (a fixed environment: what
    the shell has set does not change the document), with an in-memory database: building it
    then creates nothing on disk (`./var` for the default SQLite file)."""
    return Gateway(Settings.from_env({"DATABASE_URL": "sqlite+aiosqlite:///:memory:"}))


def openapi(gw: Gateway) -> dict[str, Any]:
    return gw.app.openapi_schema.to_schema()


def plain_path(path: str) -> str:
    """`/api/runs/{run_id:str}` (Litestar's) as OpenAPI writes it: `/api/runs/{run_id}`."""
    return _PARAM.sub(r"{\1}", path)


def role_cell(path: str, method: str, opt: dict[str, Any]) -> str:
    """Who may call it (`access.Access.authorize`)."""
    if _OPEN.match(path):
        return "none"
    need = opt.get("role") or ("viewer" if method.upper() in READS else "admin")
    return "any identity" if need == "any" else need


def roles(gw: Gateway) -> dict[tuple[str, str], str]:
    """(METHOD, path) -> the role its handler needs, for every HTTP and WebSocket route."""
    out: dict[tuple[str, str], str] = {}
    for route in gw.app.routes:
        path = plain_path(route.path)
        if isinstance(route, HTTPRoute):
            for method, entry in route.route_handler_map.items():
                handler = entry[0] if isinstance(entry, tuple) else entry
                out[(method, path)] = role_cell(path, method, handler.opt)
        elif isinstance(route, WebSocketRoute):
            out[("WS", path)] = role_cell(path, "GET", route.route_handler.opt)
    return out


def row(*cells: str) -> str:
    for cell in cells:
        if "|" in cell or "\n" in cell:
            raise SystemExit(f"a table cell cannot hold | or a newline: {cell!r}")
    return "| " + " | ".join(cells) + " |\n"


def statuses(responses: dict[str, Any]) -> tuple[str, str]:
    codes = sorted(responses, key=int)
    ok = [c for c in codes if int(c) < 400]
    return ", ".join(ok), ", ".join(c for c in codes if c not in ok)


def query_param(param: dict[str, Any]) -> str:
    """`name`, or `name=default` when it has one (as it is written in a URL)."""
    default = param.get("schema", {}).get("default")
    if default is None:
        return f"`{param['name']}`"
    return f"`{param['name']}={default if isinstance(default, str) else json.dumps(default)}`"


def routes_table(gw: Gateway, doc: dict[str, Any]) -> str:
    need = roles(gw)
    tokens = {  # the HTTP routes that take the credential as `?token=` (Server-Sent Events)
        plain_path(route.path)
        for route in gw.app.routes
        if isinstance(route, HTTPRoute)
        and any(
            (e[0] if isinstance(e, tuple) else e).opt.get("query_token")
            for e in route.route_handler_map.values()
        )
    }
    rows = []
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            ok, errors = statuses(op.get("responses", {}))
            summary = op.get("summary", "").replace("|", "/")
            who = need[(method.upper(), path)]
            params = [query_param(p) for p in op.get("parameters", ()) if p["in"] == "query"]
            if path in tokens:  # read by the access middleware, not by the handler: not in OpenAPI
                params.append("`token`")
            query = ", ".join(params)
            rows.append(row(method.upper(), f"`{path}`", query or "-", who, ok, errors or "-", summary))
    head = "| method | path | query | role | success | errors | what |\n|---|---|---|---|---|---|---|\n"
    return head + "".join(rows)


def streams_table(gw: Gateway) -> str:
    """The WebSocket routes, their role and their query parameters (the handler's arguments that are
    neither the socket, a path parameter nor a dependency the app provides)."""
    provided = set(gw.app.dependencies) | {"socket"}
    rows = []
    for route in gw.app.routes:
        if not isinstance(route, WebSocketRoute):
            continue
        path = plain_path(route.path)
        handler = route.route_handler
        params = set(_PARAM.findall(route.path))
        query = [
            f"`{name}`"
            for name in handler.parsed_fn_signature.parameters
            if name not in provided and name not in params
        ]
        if handler.opt.get("query_token"):
            query.append("`token`")
        rows.append(row(f"`{path}`", roles(gw)[("WS", path)], ", ".join(query) or "-"))
    return "| path | role | query parameters |\n|---|---|---|\n" + "".join(rows)


def type_of(node: dict[str, Any]) -> str:
    """A JSON Schema node, in a few words."""
    if "$ref" in node:
        return node["$ref"].rsplit("/", 1)[1]
    if "const" in node:
        return json.dumps(node["const"])
    if "enum" in node:
        return " or ".join(json.dumps(v) for v in node["enum"])
    if "anyOf" in node or "oneOf" in node:
        return " or ".join(type_of(n) for n in node.get("anyOf") or node["oneOf"])
    kind = node.get("type")
    if isinstance(kind, list):
        return " or ".join(type_of({**node, "type": k}) for k in kind)
    if kind == "array":
        return f"list of {type_of(node.get('items', {}))}"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        inner = node["additionalProperties"]
        return f"object of {type_of(inner)}" if inner else "object"
    if kind == "string" and node.get("format") in ("date-time", "uuid"):
        return "time" if node["format"] == "date-time" else "uuid"
    return kind or "any"


# (lower bound, upper bound, unit): "1 to 200 chars", "at most 100 items", ">= 0".
BOUNDS = (
    ("minLength", "maxLength", " chars"),
    ("minimum", "maximum", ""),
    ("minItems", "maxItems", " items"),
)


def number(value: Any) -> Any:
    """Litestar writes integer bounds as floats (`1.0`): shown as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def bounds(node: dict[str, Any]) -> Iterator[str]:
    node = {k: number(v) for k, v in node.items()}
    for low, high, unit in BOUNDS:
        if low in node and high in node:
            yield f"{node[low]} to {node[high]}{unit}"
        elif low in node:
            yield f"at least {node[low]}{unit}" if unit else f">= {node[low]}"
        elif high in node:
            yield f"at most {node[high]}{unit}" if unit else f"<= {node[high]}"
    if "exclusiveMinimum" in node:
        yield f"> {node['exclusiveMinimum']}"
    if "pattern" in node:
        yield f"matches `{node['pattern']}`"
    for sub in node.get("anyOf", ()):
        yield from bounds(sub)
    if isinstance(node.get("items"), dict):
        yield from (f"each {b}" for b in bounds(node["items"]))


def field_notes(node: dict[str, Any], required: bool) -> str:
    notes = ["required"] if required else []
    if "default" in node:
        notes.append(f"default `{json.dumps(node['default'])}`")
    notes += bounds(node)
    if node.get("description"):
        notes.append(node["description"].rstrip("."))
    return "; ".join(notes).replace("|", "/") or "-"


def bodies(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The request bodies, by title. Each route's body schema is msgspec's own (`schemas.accepts`):
    exact where Litestar's rendering of the same struct under components is not (it drops a bound
    of 0 and that unknown fields are refused)."""
    out = {}
    for item in doc["paths"].values():
        for method in METHODS:
            body = item.get(method, {}).get("requestBody", {})
            for media in body.get("content", {}).values():
                top = media.get("schema", {})
                for schema in [top, *top.get("anyOf", ())]:  # an optional body: the struct or null
                    if "title" in schema and "properties" in schema:
                        out[schema["title"]] = schema
    return out


def objects_section(doc: dict[str, Any]) -> str:
    schemas = doc["components"]["schemas"] | bodies(doc)
    parts = []
    for name, schema in sorted(schemas.items()):
        props = schema.get("properties")
        if not props:
            continue
        required = set(schema.get("required", ()))
        rows = "".join(
            row(f"`{field}`", type_of(node).replace("|", "/"), field_notes(node, field in required))
            for field, node in props.items()
        )
        closed = "A request body: unknown fields are refused (400).\n\n"
        parts.append(f"#### {name}\n\n{closed if schema.get('additionalProperties') is False else ''}")
        parts[-1] += "| field | type | notes |\n|---|---|---|\n" + rows
    return "\n".join(parts)


def py_type(tp: Any) -> str:
    """A msgspec field type, in a few words."""
    info = msgspec.inspect.type_info(tp)
    return _info(info)


def _info(info: Any) -> str:
    mi = msgspec.inspect
    if isinstance(info, mi.UnionType):
        return " or ".join(_info(t) for t in info.types)
    if isinstance(info, mi.StructType):
        return info.cls.__name__
    if isinstance(info, mi.LiteralType):
        return " or ".join(json.dumps(v) for v in info.values)
    if isinstance(info, mi.DictType):
        return "object"
    if isinstance(info, mi.ListType):
        return f"list of {_info(info.item_type)}"
    names = {
        mi.StrType: "string",
        mi.IntType: "integer",
        mi.FloatType: "number",
        mi.BoolType: "boolean",
        mi.NoneType: "null",
        mi.AnyType: "any",
        mi.DateTimeType: "time",
    }
    return names.get(type(info), type(info).__name__)


def data_fields(cls: type[msgspec.Struct]) -> str:
    """`name` (type); `name?` for a field left out of the JSON when it has its default (a struct
    with `omit_defaults`; a field defaulting to null is then never null, only absent)."""
    omits = cls.__struct_config__.omit_defaults
    fields = []
    for f in msgspec.structs.fields(cls):
        shown = py_type(f.type)
        if omits and not f.required:
            if f.default is None:
                shown = shown.removesuffix(" or null")
            fields.append(f"`{f.name}?` ({shown})")
        else:
            fields.append(f"`{f.name}` ({shown})")
    return "; ".join(fields) or "`{}`"


def events_table() -> str:
    rows = []
    for cls in EVENT_CLASSES:
        tag = cls.__struct_config__.tag
        data = next(f for f in msgspec.structs.fields(cls) if f.name == "data")
        after = STATUS_AFTER_EVENT[tag]
        status = f"`{after}`" if after else "unchanged"
        rows.append(
            row(f"`{tag}`", data_fields(data.type), status, "yes" if tag in TERMINAL_EVENT_TYPES else "")
        )
    head = "| event_type | data | run status after it | ends the run |\n|---|---|---|---|\n"
    return head + "".join(rows)


def stats_fields() -> str:
    return data_fields(RunStats)


def errors_table() -> str:
    """What each error status means (`agentbus.gateway.errors.WHY`, the texts of the OpenAPI document)."""
    rows = [row(str(code), text) for code, text in sorted(WHY.items())]
    return "| status | meaning |\n|---|---|\n" + "".join(rows)


SECTIONS = ("routes", "streams", "errors", "objects", "events", "stats")


def render(gw: Gateway | None = None) -> dict[str, str]:
    gw = gw or gateway()
    doc = openapi(gw)
    return {
        "routes": routes_table(gw, doc),
        "streams": streams_table(gw),
        "objects": objects_section(doc),
        "errors": errors_table(),
        "events": events_table(),
        "stats": stats_fields() + "\n",
    }


def markers(name: str) -> tuple[str, str]:
    return (
        f"<!-- {name}: generated by scripts/gen_api_doc.py; do not edit by hand -->",
        f"<!-- end of {name} -->",
    )


def update(text: str, sections: dict[str, str] | None = None) -> str:
    sections = sections or render()
    for name in SECTIONS:
        begin, end = markers(name)
        start, stop = text.index(begin), text.index(end) + len(end)
        text = text[:start] + f"{begin}\n{sections[name]}{end}" + text[stop:]
    return text


if __name__ == "__main__":
    current = DOC.read_text()
    fresh = update(current)
    if "--check" in sys.argv[1:]:
        if fresh != current:
            raise SystemExit("docs/api.md is out of date: run python scripts/gen_api_doc.py")
        print("docs/api.md is up to date")
    else:
        DOC.write_text(fresh)
        print(f"wrote the generated sections of {DOC}")
