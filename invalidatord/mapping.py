"""Rules -> CloudFront URL paths per distribution, and CloudFront path encoding. Pure.

Imports only the standard library, pathspec and `invalidatord.model`: no I/O, no boto3.

Encoding (docs/cloudfront.md): CloudFront compares invalidation paths with the encoded form of the
requested URL, so a path must be encoded exactly as browsers and CloudFront encode it, no more
and no less. `encode_path` percent-encodes, as upper-case hex of the UTF-8 bytes:

- every non-ASCII character,
- every control character (0x00-0x1F, 0x7F),
- the RFC 1738 unsafe set: space < > " # % { } | \\ ^ ~ [ ] and the backquote,

and nothing else: ``+ & = ; : @ $ , ' ( ) ! / ? *`` and the rest of printable ASCII stay as they
are (encoding them makes the invalidation silently miss). There is no Unicode normalisation: an
NFD name stays NFD, byte for byte as on disk. Names that are not valid UTF-8 reach the pipeline
as str decoded with ``surrogateescape`` (as `os.fsdecode` does); they are encoded back with
``.encode("utf-8", "surrogateescape")``, so each raw byte becomes its own ``%XX``. A lone
surrogate that ``surrogateescape`` did not produce (U+D800-U+DC7F, U+DD00-U+DFFF) cannot be
turned into bytes: `encode_path` raises ValueError and `Mapper.map` reports the URL as rejected.

`?` and `*`: `encode_path` takes a URL path as a person writes it (the `invalidate` command):
`?` starts a query string and a final `*` is a wildcard, so both stay. Values that come from a
file name (the template variables) are different: there `?` is just a character and is sent as
``%3F``, and a `*` is sent as the wildcard it cannot help being (CloudFront has no escape for
it and accepts it only as the last character), so the URL is cut just after the first `*` that
came from a name: ``a*b.html`` with ``/{path}`` becomes ``/a*``. That over-invalidates on
purpose (everything starting with ``/a``) rather than miss the file or send a path CloudFront
rejects. A `*` written at the very end of a template is an ordinary wildcard.

After substitution a URL is normalised (one leading `/`, runs of `/` collapsed), so ``/{dir}/``
of a top-level ``index.html`` is ``/``. A URL longer than 4,000 characters after encoding is
never sent: it is reported in `Mapped.rejected`.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pathspec.patterns.gitignore.base import GitIgnorePatternError
from pathspec.patterns.gitignore.spec import GitIgnoreSpecPattern

from invalidatord.model import MAX_PATH_LENGTH

TEMPLATE_FIELDS: frozenset[str] = frozenset({"path", "dir", "name", "stem", "ext"})

_KNOWN = ", ".join(sorted(TEMPLATE_FIELDS))
_TOO_LONG = f"longer than {MAX_PATH_LENGTH} characters"

# Characters encode_path must encode: anything outside printable ASCII (controls, DEL,
# non-ASCII, surrogates) plus the RFC 1738 unsafe set. Space (0x20) is outside 0x21-0x7E.
_UNSAFE = re.compile(r'[^\x21-\x7e]|["#%<>\[\\\]^`{|}~]')
# The same for a value taken from a file name, where `?` is a character, not a query string.
_UNSAFE_IN_NAME = re.compile(r'[^\x21-\x7e]|["#%<>\[\\\]^`{|}~?]')
_SLASHES = re.compile(r"/{2,}")


def _percent(match: re.Match[str]) -> str:
    char = match.group()
    try:
        data = char.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError(
            f"cannot encode lone surrogate U+{ord(char):04X} (not a byte of a file name)"
        ) from None
    return "".join(f"%{byte:02X}" for byte in data)


def encode_path(raw: str) -> str:
    """CloudFront encoding of one decoded URL path (see the module docstring).

    `?` and `*` are kept (query string, wildcard); `/` is kept. Raises ValueError for a lone
    surrogate that does not stand for a raw byte. Idempotent on paths that need no encoding.
    """
    return _UNSAFE.sub(_percent, raw)


def path_problem(path: str) -> str | None:
    """Why CloudFront would refuse `path` (an encoded URL path) in an invalidation batch for
    its shape (empty, no leading `/`, a `*` not last, too long), or None: what `invalidatord
    invalidate` checks before queueing anything. The encoding is not checked: `encode_path`
    makes it right, and `--raw` means the caller vouches for it (CloudFront's refusal of a
    badly encoded path is reported by the submitter, path by path)."""
    if not path:
        return "an empty path"
    if not path.startswith("/"):
        return "a URL path starts with '/' (e.g. /index.html or /img/*)"
    if "*" in path[:-1]:
        return "'*' is allowed only as the last character (e.g. /img/*)"
    if len(path) > MAX_PATH_LENGTH:
        return f"{len(path)} characters once encoded; CloudFront takes at most {MAX_PATH_LENGTH}"
    return None


def _encode_value(value: str) -> str:
    """Encoding of a template variable taken from a file name: also `?` -> %3F."""
    return _UNSAFE_IN_NAME.sub(_percent, value)


def normalise(url: str) -> str:
    """One leading `/` and no runs of `/`: ``a//b/`` -> ``/a/b/``, ``""`` -> ``/``."""
    if "//" not in url:  # nearly every URL: no regex (0.46 -> 0.1 us)
        return url if url.startswith("/") else "/" + url
    return _SLASHES.sub("/", "/" + url)


# pathspec builds `.` and `$` into its regexes without re.DOTALL, so a directory name with a
# newline defeats `**`, and `$` also matches before a trailing newline (`index.html\n` would
# match `**/index.html`). Fixed upstream in https://github.com/cpburnz/python-pathspec/pull/139
# (newlines under `**`), not in pathspec 1.1.1. `|$)` is the only `$` GitIgnoreSpecPattern
# emits (its end-of-path-or-directory group); a literal `$` in a pattern is escaped as `\$`.
def _fix_newlines(regex: str) -> re.Pattern[str]:
    return re.compile(regex.replace("|$)", r"|\Z)"), re.DOTALL)


def compile_match(pattern: str) -> Callable[[str], bool]:
    """A predicate on paths relative to the source root for one gitignore-style pattern.

    Matches exactly as the same line in a .gitignore (pathspec's GitIgnoreSpec): `*.html`
    at any depth, `/top.html` only at the root, `docs/` everything under any `docs`
    directory, `**` anything. Raises ValueError for a pattern that could never match
    (blank, a `#` comment, `/`, an unclosed `[`), a negation (`!`), or one pathspec rejects.
    """
    if pattern.startswith("!"):
        raise ValueError(
            f"pattern {pattern!r}: negation ('!') has no meaning in a rule; "
            "put a rule with urls: [] before the broader one instead"
        )
    try:
        compiled = GitIgnoreSpecPattern(pattern)
    except GitIgnorePatternError as exc:
        cause = exc.__cause__ or exc
        raise ValueError(f"pattern {pattern!r} is not a valid gitignore pattern: {cause}") from None
    if compiled.regex is None or compiled.include is None:
        raise ValueError(
            f"pattern {pattern!r} matches nothing (blank, a '#' comment, '/', or an unclosed '[')"
        )
    search = _fix_newlines(compiled.regex.pattern).search

    def match(path: str) -> bool:
        # as pathspec normalises a path: one leading "/" (an S3 key may have it) or "./" is
        # not part of the name
        if path.startswith("/"):
            path = path[1:]
        elif path.startswith("./"):
            path = path[2:]
        return search(path) is not None

    return match


# A parsed template: literal text (encoded once the Mapper compiles it) and variable names.
_Part = tuple[bool, str]  # (is_variable, literal text or variable name)


def _parse_template(template: str, tag: bool = False) -> tuple[_Part, ...]:
    """Split a template into parts; ValueError (the message check_url_template gives) if bad.
    A cache tag template (`tag`) need not start with `/` and may hold no `*` at all."""
    if tag:
        if not template:
            raise ValueError("empty cache tag template")
        if "*" in template:
            raise ValueError(f"cache tag template {template!r}: CloudFront tags cannot hold '*'")
        return _strip(_parse_template("/" + template))  # parsed as a URL template, less the /
    if not template:
        raise ValueError("empty URL template (it must start with '/' or '{')")
    if template[0] not in "/{":
        raise ValueError(f"URL template {template!r} must start with '/' or '{{'")
    if "*" in template[:-1]:
        raise ValueError(
            f"URL template {template!r}: '*' is allowed only as the last character "
            "(a CloudFront wildcard)"
        )
    parts: list[_Part] = []
    literal: list[str] = []
    i, end = 0, len(template)
    while i < end:
        char = template[i]
        if char in "{}" and template[i + 1 : i + 2] == char:
            literal.append(char)  # `{{` and `}}` are literal braces, as in str.format
            i += 2
            continue
        if char == "}":
            raise ValueError(
                f"URL template {template!r}: single '}}' at position {i} "
                "(write '}}' for a literal brace)"
            )
        if char != "{":
            literal.append(char)
            i += 1
            continue
        close = template.find("}", i + 1)
        opener = template.find("{", i + 1)
        if close < 0 or 0 <= opener < close:
            raise ValueError(
                f"URL template {template!r}: unclosed '{{' at position {i} "
                "(write '{{' for a literal brace)"
            )
        _check_field(template[i + 1 : close])
        if literal:
            parts.append((False, "".join(literal)))
            literal = []
        parts.append((True, template[i + 1 : close]))
        i = close + 1
    if literal:
        parts.append((False, "".join(literal)))
    return tuple(parts)


def _check_field(field: str) -> None:
    name = re.split(r"[!:]", field, maxsplit=1)[0]
    if not field:
        raise ValueError(f"empty template variable {{}} (known: {_KNOWN})")
    if name not in TEMPLATE_FIELDS:
        raise ValueError(f"unknown template variable {{{field}}} (known: {_KNOWN})")
    if field != name:
        what = "a conversion" if field[len(name)] == "!" else "a format spec"
        raise ValueError(
            f"template variable {{{field}}} has {what}, which URL templates do not take: "
            f"write {{{name}}}"
        )


def _strip(parts: tuple[_Part, ...]) -> tuple[_Part, ...]:
    """`parts` less the leading `/` literal they start with."""
    first = parts[0][1]
    return parts[1:] if first == "/" else ((False, first[1:]), *parts[1:])


def check_tag_template(template: str) -> None:
    """Raise ValueError, with a message for the user, if `template` is not a valid cache tag
    template (the fields of URL templates, no `*`)."""
    _parse_template(template, tag=True)


def check_url_template(template: str) -> None:
    """Raise ValueError, with a message for the user, if `template` is not a valid URL template.

    Valid: starts with `/` or a variable; variables are `{path}`, `{dir}`, `{name}`, `{stem}`,
    `{ext}` with no format spec or conversion; `{{`/`}}` are literal braces; `*` only as the
    last character.
    """
    _encode_literals(_parse_template(template))


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule of the config, in config order (config.py builds these from the YAML)."""

    match: str  # gitignore-style pattern on the path relative to the source root
    distributions: tuple[str, ...]  # distribution names (config names, not CloudFront ids)
    urls: tuple[str, ...]  # templates; () = matched, invalidate nothing
    source: str | None = None  # None = every source
    tags: tuple[str, ...] = ()  # cache tag templates, sent as `#tag` items


#: CloudFront's longest cache tag
MAX_TAG_LENGTH = 256
_TAG_BAD = re.compile(r"[^\x21-\x7e]|[,*]")


def tag_problem(tag: str) -> str | None:
    """Why CloudFront would refuse `tag` (without its `#`) as a cache tag, or None."""
    if not tag:
        return "it is empty"
    if len(tag) > MAX_TAG_LENGTH:
        return f"it is longer than {MAX_TAG_LENGTH} characters"
    bad = _TAG_BAD.search(tag)
    if bad:
        return f"character {bad.group()!r} is not allowed (printable ASCII without ',' and '*')"
    return None


@dataclass(frozen=True, slots=True)
class Mapped:
    """What one path maps to.

    `urls` holds only distributions that get at least one URL: it is empty when no rule
    matched (`rule is None`), when the matching rule has `urls: []`, and when every URL was
    rejected.
    """

    urls: dict[str, tuple[str, ...]]  # distribution -> encoded URL paths, deduplicated, in order
    rule: int | None  # index of the rule that matched; None = no rule matched
    rejected: tuple[tuple[str, str], ...]  # (url, reason) that cannot be sent


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    matches: Callable[[str], bool]
    source: str | None
    distributions: tuple[str, ...]
    templates: tuple[tuple[_Part, ...], ...]
    used: frozenset[str]  # the variables its templates use: only those are encoded
    tags: tuple[tuple[_Part, ...], ...] = ()


_PATH_ONLY = frozenset({"path"})


def _fields(path: str, used: frozenset[str] = TEMPLATE_FIELDS) -> dict[str, str]:
    """The template variables of `path`; only those in `used` (the hot path needs one)."""
    if used <= _PATH_ONLY:
        return {"path": path}
    directory, _, name = path.rpartition("/")
    stem, dot_ext = posixpath.splitext(name)  # ".htaccess" -> (".htaccess", "")
    fields = {"path": path, "dir": directory, "name": name, "stem": stem, "ext": dot_ext[1:]}
    return {k: v for k, v in fields.items() if k in used}


def _render(parts: tuple[_Part, ...], values: dict[str, str]) -> str:
    out: list[str] = []
    for is_variable, text in parts:
        if not is_variable:
            out.append(text)
            continue
        value = values[text]
        star = value.find("*")
        if star >= 0:
            # CloudFront accepts `*` only last: cut here and invalidate by prefix (see module doc).
            out.append(value[: star + 1])
            break
        out.append(value)
    return normalise("".join(out))


class Mapper:
    """Maps a (source, path) to URL paths per distribution with the rules, first match wins."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        """Compile every pattern and template once; ValueError names the bad rule."""
        compiled: list[_CompiledRule] = []
        for index, rule in enumerate(rules):
            try:
                matches = compile_match(rule.match)
                templates = tuple(_encode_literals(_parse_template(t)) for t in rule.urls)
                tags = tuple(_parse_template(t, tag=True) for t in rule.tags)
            except ValueError as exc:
                raise ValueError(f"rules[{index}]: {exc}") from None
            used = frozenset(
                text for parts in (*templates, *tags) for is_var, text in parts if is_var
            )
            compiled.append(
                _CompiledRule(matches, rule.source, rule.distributions, templates, used, tags)
            )
        self._rules = tuple(compiled)

    def map(self, source: str, path: str) -> Mapped:
        """The URLs `path` (relative to the root of `source`) maps to. Never raises."""
        for index, rule in enumerate(self._rules):
            if (rule.source is None or rule.source == source) and rule.matches(path):
                return self._apply(index, rule, path)
        return Mapped(urls={}, rule=None, rejected=())

    def _apply(self, index: int, rule: _CompiledRule, path: str) -> Mapped:
        if not (rule.templates or rule.tags) or not rule.distributions:
            return Mapped(urls={}, rule=index, rejected=())
        raw = _fields(path, rule.used)
        try:
            # a name with nothing to encode (nearly every one) is its own encoding: one
            # search of the path instead of a substitution per variable
            values = (
                raw
                if _UNSAFE_IN_NAME.search(path) is None
                else {k: _encode_value(v) for k, v in raw.items()}
            )
        except ValueError as exc:
            shown = path.encode("utf-8", "backslashreplace").decode("utf-8")
            return Mapped(urls={}, rule=index, rejected=((normalise(shown), str(exc)),))
        urls: dict[str, None] = {}
        rejected: dict[tuple[str, str], None] = {}
        for parts in rule.templates:
            url = _render(parts, values)
            if len(url) > MAX_PATH_LENGTH:
                rejected[url, _TOO_LONG] = None
            else:
                urls[url] = None
        seen_tags: set[str] = set()
        for parts in rule.tags:
            # a tag is sent as it is (never percent-encoded); CloudFront compares tags
            # case-insensitively, so two that differ in case are one
            tag = "".join(raw[text] if is_var else text for is_var, text in parts)
            problem = tag_problem(tag)
            if problem:
                shown = tag.encode("ascii", "backslashreplace").decode("ascii")
                rejected["#" + shown, f"cache tag: {problem}"] = None
            elif tag.lower() not in seen_tags:
                seen_tags.add(tag.lower())
                urls["#" + tag] = None
        found = tuple(urls)
        per_distribution = dict.fromkeys(rule.distributions, found) if found else {}
        return Mapped(urls=per_distribution, rule=index, rejected=tuple(rejected))


def _encode_literals(parts: tuple[_Part, ...]) -> tuple[_Part, ...]:
    return tuple((v, text if v else encode_path(text)) for v, text in parts)
