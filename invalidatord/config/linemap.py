"""YAML text -> data, plus the line of every key and list item, keyed by its key path.

The file is composed with PyYAML first, to learn the line of every key and list item, then
constructed with the safe loader. Between the two, `${VAR}` references in scalar values are
substituted (never in keys), and a document whose aliases would expand beyond
`MAX_ALIAS_EXPANSION` values is refused before anything walks it as a tree: a "billion
laughs" file is a few lines that expand to 10**9 values. Messages name a key path
(`sources[0].root`, see `render`) and the nearest line known for it (`line_of`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml

from invalidatord.config.environ import substitute
from invalidatord.config.fields import Loc

__all__ = [
    "MAX_ALIAS_EXPANSION",
    "AliasBomb",
    "join",
    "line_of",
    "parse_yaml",
    "render",
    "yaml_problem",
]

#: Values that aliases may add to the document when expanded (a real config reuses a few
#: mappings a few dozen times; a bomb adds millions). Checked in time linear in the file.
MAX_ALIAS_EXPANSION = 100_000


class AliasBomb(yaml.YAMLError):
    """The document's aliases expand beyond MAX_ALIAS_EXPANSION values."""

    def __init__(self, line: int) -> None:
        super().__init__(
            f"aliases expand to more than {MAX_ALIAS_EXPANSION} values "
            "(an alias bomb?); write the values out or reuse fewer of them"
        )
        self.line = line


class _Loader(yaml.SafeLoader):
    """SafeLoader that remembers where each alias is (to name its line) and which scalars
    were typed from their text (to type them again after substitution)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.aliases: list[tuple[int, yaml.Node]] = []
        self.implicit: set[int] = set()

    def compose_scalar_node(self, anchor: Any) -> Any:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        node = super().compose_scalar_node(anchor)
        if event.tag in (None, "!") and event.implicit[0]:
            self.implicit.add(id(node))
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        alias = self.check_event(yaml.AliasEvent)
        event = self.peek_event() if alias else None  # type: ignore[no-untyped-call]
        node = super().compose_node(parent, index)
        if event is not None and node is not None:
            self.aliases.append((event.start_mark.line + 1, node))
        return node


def parse_yaml(
    text: str, environ: Mapping[str, str] | None = None
) -> tuple[object, dict[Loc, int], list[tuple[int, str]], set[Loc]]:
    """The document's data, the line (1-based) of each key and list item, problems found on
    the way (duplicate keys, unknown variables), and the key paths whose variables could not
    be substituted (their value is left as written, so other checks of it say nothing new).
    `environ` defaults to os.environ."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, [], set()
        _check_aliases(node, loader.aliases)
        lines: dict[Loc, int] = {(): node.start_mark.line + 1}
        problems: list[tuple[int, str]] = []
        walk = _Walk(loader, os.environ if environ is None else environ, lines, problems)
        # Walk before constructing: construction rewrites merge keys (<<) in place.
        walk.visit(node, ())
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return data, lines, problems, walk.unresolved


def _check_aliases(root: yaml.Node, aliases: list[tuple[int, yaml.Node]]) -> None:
    """Raise AliasBomb (at the line of the alias that expands most) when expanding the aliases
    would add more than MAX_ALIAS_EXPANSION values. Sizes are memoised per node, so this is
    linear in the composed (shared) graph."""
    if not aliases:
        return
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = 0  # a recursive alias adds nothing: it repeats, it does not grow
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item) for item in node.value)
        sizes[id(node)] = total
        return total

    unique = _count_unique(root)
    expanded = size(root)
    if expanded - unique > MAX_ALIAS_EXPANSION:
        line, _ = max(aliases, key=lambda alias: (sizes.get(id(alias[1]), 0), -alias[0]))
        raise AliasBomb(line)


def _count_unique(root: yaml.Node) -> int:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                stack += (key, value)
        elif isinstance(node, yaml.SequenceNode):
            stack += node.value
    return len(seen)


class _Walk:
    """Records the line of every key path, duplicate keys, and substitutes variables."""

    def __init__(
        self,
        loader: yaml.SafeLoader,
        environ: Mapping[str, str],
        lines: dict[Loc, int],
        problems: list[tuple[int, str]],
    ) -> None:
        self.loader = loader
        self.implicit = loader.implicit if isinstance(loader, _Loader) else set()
        self.environ = environ
        self.lines = lines
        self.problems = problems
        self.active: set[int] = set()
        self.substituted: set[int] = set()
        self.unresolved: set[Loc] = set()

    def visit(self, node: yaml.Node, path: Loc) -> None:
        if isinstance(node, yaml.ScalarNode):
            self._substitute(node, path)
        else:
            _walk_lines(self.loader, node, path, self.lines, self.problems, self.active, self)

    def _substitute(self, node: yaml.ScalarNode, path: Loc) -> None:
        """Variables in a scalar value; a plain scalar is typed again from its new text, as
        if it had been written so (`port: ${PORT}` is a number)."""
        if "$" not in node.value or id(node) in self.substituted:
            return
        self.substituted.add(id(node))
        try:
            value = substitute(node.value, self.environ)
        except ValueError as exc:
            self.problems.append((node.start_mark.line + 1, join(path, str(exc))))
            self.unresolved.add(path)
            return
        if id(node) in self.implicit:
            node.tag = self.loader.resolve(yaml.ScalarNode, value, (True, False))  # type: ignore[no-untyped-call]
        node.value = value


def _walk_lines(
    loader: yaml.SafeLoader,
    node: yaml.Node,
    path: Loc,
    lines: dict[Loc, int],
    problems: list[tuple[int, str]],
    active: set[int],
    walk: _Walk,
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
            walk.visit(value_node, (*path, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            walk.visit(item, (*path, i))
    active.discard(id(node))


def yaml_problem(exc: yaml.YAMLError, text: str) -> tuple[int, str]:
    """A PyYAML error -> (line, message)."""
    if isinstance(exc, AliasBomb):
        return exc.line, f"invalid YAML: {exc}"
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
