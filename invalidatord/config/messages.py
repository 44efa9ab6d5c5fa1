"""pydantic errors -> messages for people, each at a key path of the file.

pydantic reports a location such as `sources.0.filesystem.root` and a message written for
programmers. `translate` follows the location down `Config` (dropping union tags) to the key
path and the type declared there, and words the message for someone editing the YAML.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel

from invalidatord.config.fields import ERR_INVALID, ERR_REFERENCE, Loc, describe_value
from invalidatord.config.schema import Config

__all__ = ["translate", "unknown_key"]


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def _union_members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(arg) for arg in get_args(tp) if arg is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _tagged(tp: Any) -> dict[object, type[BaseModel]]:
    """For a union of models told apart by `type`: tag -> model. Empty for anything else."""
    members = _union_members(tp)
    if len(members) < 2 or not all(_is_model(m) for m in members):
        return {}
    tags: dict[object, type[BaseModel]] = {}
    for member in members:
        field = member.model_fields.get("type")
        if field is not None:
            for tag in get_args(field.annotation):
                tags[tag] = member
    return tags


def _step(tp: Any, part: object, node: object) -> Any:
    """The type found at `part` below a value of type `tp` (None when unknown)."""
    members = _union_members(tp)
    tags = _tagged(tp)
    if tags:
        tag = node.get("type") if isinstance(node, Mapping) else None
        members = [tags[tag]] if tag in tags else []
    for member in members:
        if _is_model(member):
            field = member.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                return field.annotation
        elif get_origin(member) is list and isinstance(part, int):
            return get_args(member)[0]
        elif get_origin(member) is dict:
            return get_args(member)[1]
    return None


def _child(node: object, part: object) -> object:
    if isinstance(node, Mapping):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _walk_types(loc: Sequence[object], data: object) -> tuple[Loc, Any, object]:
    """Follow a pydantic `loc` down Config: the key path without union tags (pydantic puts
    `filesystem` in `sources.0.filesystem.root`), the type there, and the raw value there."""
    path: list[object] = []
    tp: Any = Config
    node = data
    for part in loc:
        tags = _tagged(tp)
        if tags and part in tags and isinstance(node, Mapping) and node.get("type") == part:
            tp = tags[part]
            continue
        tp = _step(tp, part, node)
        node = _child(node, part)
        path.append(part)
    return tuple(path), tp, node


def _model_keys(model: Any) -> list[str]:
    if not _is_model(model):
        return []
    return [name for name, field in model.model_fields.items() if not field.exclude]


def unknown_key(key: object, model: Any, *, suggest: bool = True) -> str:
    """The message for a key `model` does not have, listing the keys it has and suggesting
    the nearest one (a typo is the usual reason)."""
    expected = _model_keys(model)
    hint = f" (expected one of: {', '.join(expected)})" if expected else ""
    nearest = (
        difflib.get_close_matches(key, expected, n=1) if isinstance(key, str) and suggest else []
    )
    suggestion = f"; did you mean {nearest[0]!r}?" if nearest else ""
    return f"unknown key {key!r}{hint}{suggestion}"


def _bounds(model_path: Loc, data: object) -> tuple[object, object]:
    """The (lower, upper) bounds declared on the integer field at `model_path`."""
    lower: object = None
    upper: object = None
    if model_path:
        _, parent, parent_node = _walk_types(model_path[:-1], data)
        members = _union_members(parent)
        tags = _tagged(parent)
        if tags and isinstance(parent_node, Mapping) and parent_node.get("type") in tags:
            members = [tags[parent_node["type"]]]
        for member in members:
            field = member.model_fields.get(model_path[-1]) if _is_model(member) else None
            for meta in field.metadata if field is not None else ():
                lower = getattr(meta, "ge", lower)
                upper = getattr(meta, "le", upper)
    return lower, upper


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping of keys",
    "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "list_type": "a list",
    "path_type": "a path",
}


def translate(error: Mapping[str, Any], data: object) -> tuple[Loc, str]:
    """A pydantic error -> (key path, message for people)."""
    kind: str = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    value = error.get("input")
    path, tp, _node = _walk_types(error["loc"], data)
    if kind == "missing":
        return path, "required key missing"
    if kind == "extra_forbidden":
        _, parent, _ = _walk_types(error["loc"][:-1], data)
        models = [m for m in _union_members(parent) if _is_model(m)]
        return path, unknown_key(path[-1], models[0] if len(models) == 1 else None)
    if kind == "invalid_key":
        return path[:-1], f"key {path[-1]!r} is not a string"
    if kind in ("union_tag_not_found", "union_tag_invalid"):
        tags = ", ".join(str(tag) for tag in _tagged(tp))
        if kind == "union_tag_not_found":
            if not isinstance(value, Mapping):
                return path, f"expected a mapping of keys, got {describe_value(value)}"
            return (*path, "type"), f"required key missing (expected one of: {tags})"
        return (*path, "type"), f"unknown type {ctx.get('tag')!r} (expected one of: {tags})"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return path, str(ctx["error"])
    if kind in (ERR_INVALID, ERR_REFERENCE):
        return path, str(error["msg"])
    if kind in _TYPE_NAMES:
        return path, f"expected {_TYPE_NAMES[kind]}, got {describe_value(value)}"
    if kind == "literal_error":
        return path, f"expected {ctx.get('expected')}, got {describe_value(value)}"
    if kind in ("too_short", "string_too_short"):
        return path, "must not be empty"
    if kind in ("greater_than_equal", "less_than_equal"):
        lower, upper = _bounds(path, data)
        if lower is not None and upper is not None:
            return path, f"must be between {lower} and {upper}, got {describe_value(value)}"
        if kind == "greater_than_equal":
            return path, f"must be at least {ctx.get('ge')}, got {describe_value(value)}"
        return path, f"must be at most {ctx.get('le')}, got {describe_value(value)}"
    message = str(error["msg"])
    return path, message[:1].lower() + message[1:]
