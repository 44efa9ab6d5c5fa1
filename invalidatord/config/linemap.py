"""YAML text -> data, plus the line of every key and list item, keyed by its key path.

The file is composed with PyYAML first, to learn the line of every key and list item, then
constructed with the safe loader. Messages name a key path (`sources[0].root`, see `render`)
and the nearest line known for it (`line_of`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from invalidatord.config.fields import Loc

__all__ = ["join", "line_of", "parse_yaml", "render", "yaml_problem"]


def parse_yaml(text: str) -> tuple[object, dict[Loc, int], list[tuple[int, str]]]:
    """The document's data, the line (1-based) of each key and list item, and duplicate keys."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, []
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        problems: list[tuple[int, str]] = []
        # Walk before constructing: construction rewrites merge keys (<<) in place.
        _walk_lines(loader, node, (), lines, problems, set())
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, lines, problems


def _walk_lines(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[int, str]],
    active: set[int],
) -> None:
    if id(node) in active:  # a recursive alias: the structure repeats, its lines do not
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[object, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(
                key_node, yaml.ScalarNode
            ):
                continue
            key = loader.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first_line:
                where = render((*path, key))
                problems.append((line, f"{where}: duplicate key (first at line {first_line[key]})"))
            else:
                first_line[key] = line
            lines[(*path, key)] = line
            _walk_lines(loader, value_node, (*path, key), lines, problems, active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk_lines(loader, item, (*path, i), lines, problems, active)
    active.discard(id(node))


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """A PyYAML error -> (line, message)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "cannot parse"
        return line, f"invalid YAML: {problem}"
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        character = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return line, f"invalid YAML: unacceptable character #x{character:04x}: {exc.reason}"
    return 1, f"invalid YAML: {' '.join(str(exc).split())}"


def line_of(path: Loc, lines: Mapping[Loc, int]) -> int:
    """The line of `path`, or of its nearest ancestor in the file (a missing key: its parent)."""
    for end in range(len(path), -1, -1):
        line = lines.get(path[:end])
        if line is not None:
            return line
    return 1


def render(path: Loc) -> str:
    """("sources", 0, "root") -> "sources[0].root"."""
    out = ""
    for part in path:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", part):
            out += f".{part}" if out else part
        else:
            out += f"[{str(part)!r}]"
    return out


def join(path: Loc, message: str) -> str:
    """`KEY.PATH: message`, or just the message for the document itself."""
    where = render(path)
    return f"{where}: {message}" if where else message
