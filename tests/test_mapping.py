"""Rules -> URL paths: rule order, templates, limits, template checks, and properties."""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pathspec import GitIgnoreSpec

from invalidatord.mapping import (
    TEMPLATE_FIELDS,
    Mapped,
    Mapper,
    Rule,
    check_url_template,
    compile_match,
    encode_path,
    normalise,
)

WWW = ("www",)


def urls_of(mapper: Mapper, path: str, source: str = "docroot") -> dict[str, tuple[str, ...]]:
    return mapper.map(source, path).urls


# --- rules ---------------------------------------------------------------------------------


def test_first_matching_rule_wins() -> None:
    """Of two matching rules, only the earlier one's templates apply."""
    mapper = Mapper(
        [
            Rule("*.html", WWW, ("/html/{path}",)),
            Rule("**", WWW, ("/{path}",)),
        ]
    )
    assert mapper.map("docroot", "a/b.html") == Mapped(
        urls={"www": ("/html/a/b.html",)}, rule=0, rejected=()
    )
    assert mapper.map("docroot", "a/b.css") == Mapped(
        urls={"www": ("/a/b.css",)}, rule=1, rejected=()
    )


def test_rule_order_is_config_order_not_specificity() -> None:
    """A broad rule listed first shadows a more specific one listed after it."""
    mapper = Mapper([Rule("**", WWW, ("/{path}",)), Rule("**/index.html", WWW, ("/{dir}/",))])
    assert mapper.map("docroot", "a/index.html").rule == 0
    assert urls_of(mapper, "a/index.html") == {"www": ("/a/index.html",)}


def test_rule_with_source_applies_only_to_that_source() -> None:
    """A rule naming a source is skipped for other sources, which fall through to later rules."""
    mapper = Mapper(
        [
            Rule("**", ("assets",), ("/static/{path}",), source="bucket"),
            Rule("**", WWW, ("/{path}",)),
        ]
    )
    assert urls_of(mapper, "logo.png", source="bucket") == {"assets": ("/static/logo.png",)}
    assert urls_of(mapper, "logo.png", source="docroot") == {"www": ("/logo.png",)}


def test_empty_urls_means_matched_and_ignored() -> None:
    """`urls: []` stops the search: the path is matched (rule index set) and maps to nothing."""
    mapper = Mapper([Rule("*.tmp", WWW, ()), Rule("**", WWW, ("/{path}",))])
    assert mapper.map("docroot", "x/upload.tmp") == Mapped(urls={}, rule=0, rejected=())


def test_no_rule_matched() -> None:
    """A path no rule matches maps to nothing with rule None."""
    mapper = Mapper([Rule("*.html", WWW, ("/{path}",))])
    assert mapper.map("docroot", "style.css") == Mapped(urls={}, rule=None, rejected=())
    assert Mapper([]).map("docroot", "a.html") == Mapped(urls={}, rule=None, rejected=())


def test_index_html_maps_to_directory_and_file() -> None:
    """The design's index rule gives both the directory URL and the file URL."""
    mapper = Mapper([Rule("**/index.html", WWW, ("/{dir}/", "/{path}"))])
    assert urls_of(mapper, "docs/guide/index.html") == {
        "www": ("/docs/guide/", "/docs/guide/index.html")
    }


def test_top_level_index_maps_to_root() -> None:
    """/{dir}/ of a top-level index.html is '/', not '//'."""
    mapper = Mapper([Rule("**/index.html", WWW, ("/{dir}/", "/{path}"))])
    assert urls_of(mapper, "index.html") == {"www": ("/", "/index.html")}


def test_several_distributions_get_the_same_urls() -> None:
    """A rule with several distributions yields the URLs for each, in the rule's order."""
    mapper = Mapper([Rule("**", ("www", "cdn", "eu"), ("/{path}",))])
    result = mapper.map("docroot", "a.css")
    assert list(result.urls) == ["www", "cdn", "eu"]
    assert set(result.urls.values()) == {("/a.css",)}


def test_rule_without_distributions_maps_to_nothing() -> None:
    """A rule with no distributions matches but produces no URLs."""
    mapper = Mapper([Rule("**", (), ("/{path}",))])
    assert mapper.map("docroot", "a.css") == Mapped(urls={}, rule=0, rejected=())


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b/c.html", "/path=a/b/c.html dir=a/b name=c.html stem=c ext=html"),
        ("c.html", "/path=c.html dir= name=c.html stem=c ext=html"),
        (".htaccess", "/path=.htaccess dir= name=.htaccess stem=.htaccess ext="),
        ("d/a.tar.gz", "/path=d/a.tar.gz dir=d name=a.tar.gz stem=a.tar ext=gz"),
        ("README", "/path=README dir= name=README stem=README ext="),
        ("x/name.", "/path=x/name. dir=x name=name. stem=name ext="),
    ],
)
def test_template_variables(path: str, expected: str) -> None:
    """{path} {dir} {name} {stem} {ext} hold the documented parts of the path."""
    template = "/path={path} dir={dir} name={name} stem={stem} ext={ext}"
    mapper = Mapper([Rule("**", WWW, (template,))])
    assert urls_of(mapper, path) == {"www": (expected.replace(" ", "%20"),)}


def test_urls_are_deduplicated_in_template_order() -> None:
    """Templates producing the same URL give it once, at its first position."""
    mapper = Mapper([Rule("**", WWW, ("/{dir}/", "/{path}", "/{dir}/{name}", "/{dir}/"))])
    assert urls_of(mapper, "a/b.html") == {"www": ("/a/", "/a/b.html")}


def test_template_literals_are_encoded_and_slashes_collapsed() -> None:
    """Literal text in a template is encoded like a path, and '//' runs collapse."""
    mapper = Mapper([Rule("**", WWW, ("/static files//{dir}//{stem}.min.{ext}",))])
    assert urls_of(mapper, "js/app.js") == {"www": ("/static%20files/js/app.min.js",)}


def test_template_starting_with_a_variable_gets_a_leading_slash() -> None:
    """A template such as '{path}' still yields an absolute URL path."""
    mapper = Mapper([Rule("**", WWW, ("{path}", "{dir}"))])
    assert urls_of(mapper, "a/b.html") == {"www": ("/a/b.html", "/a")}


def test_wildcard_at_end_of_template() -> None:
    """A trailing '*' in a template is a CloudFront wildcard and is kept."""
    mapper = Mapper([Rule("**", WWW, ("/{dir}/*", "/{path}*"))])
    assert urls_of(mapper, "img/a b.png") == {"www": ("/img/*", "/img/a%20b.png*")}
    assert urls_of(mapper, "top.png") == {"www": ("/*", "/top.png*")}


def test_star_in_name_cuts_the_rest_of_the_template() -> None:
    """A '*' in a name ends the URL there, dropping literals after it (over-invalidation)."""
    mapper = Mapper([Rule("**", WWW, ("/{name}/index.html", "/x/{stem}.{ext}"))])
    assert urls_of(mapper, "d/a*b.c*d") == {"www": ("/a*", "/x/a*")}


def test_question_mark_in_template_literal_is_a_query_string() -> None:
    """A '?' written in the template stays (query string); one from a name is encoded."""
    mapper = Mapper([Rule("**", WWW, ("/{path}?v=1",))])
    assert urls_of(mapper, "a?.css") == {"www": ("/a%3F.css?v=1",)}


# --- the 4,000-character limit ---------------------------------------------------------------


def test_url_of_exactly_4000_characters_is_kept() -> None:
    """A URL of exactly 4,000 characters is sent."""
    path = "d/" + "x" * 3997  # "/" + 3999 characters
    mapped = Mapper([Rule("**", WWW, ("/{path}",))]).map("docroot", path)
    assert mapped.urls == {"www": ("/" + path,)}
    assert len(mapped.urls["www"][0]) == 4000
    assert mapped.rejected == ()


def test_url_over_4000_characters_is_rejected_not_sent() -> None:
    """A URL of 4,001 characters goes to `rejected` with the reason; others of the rule stay."""
    path = "d/" + "x" * 3998
    mapped = Mapper([Rule("**", WWW, ("/{dir}/", "/{path}"))]).map("docroot", path)
    assert mapped.urls == {"www": ("/d/",)}
    assert mapped.rejected == (("/" + path, "longer than 4000 characters"),)


def test_limit_counts_characters_after_encoding() -> None:
    """667 'é' are 668 characters raw but 4,003 encoded: rejected."""
    path = "\u00e9" * 667
    mapped = Mapper([Rule("**", WWW, ("/{path}",))]).map("docroot", path)
    assert mapped.urls == {}
    assert mapped.rule == 0
    assert mapped.rejected == (("/" + "%C3%A9" * 667, "longer than 4000 characters"),)


def test_lone_surrogate_is_rejected_with_reason() -> None:
    """A lone surrogate that is no escaped byte cannot be encoded: rejected, never sent."""
    mapped = Mapper([Rule("**", WWW, ("/{path}",))]).map("bucket", "a\ud800b")
    assert mapped.urls == {}
    assert len(mapped.rejected) == 1
    assert "U+D800" in mapped.rejected[0][1]
    with pytest.raises(ValueError, match="U\\+D800"):
        encode_path("/a\ud800b")


# --- templates -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template",
    ["/{path}", "{path}", "/{dir}/", "/{dir}/*", "/{stem}.{ext}", "/{{literal}}/{name}", "/", "/*"],
)
def test_valid_templates(template: str) -> None:
    """Well-formed templates pass check_url_template."""
    check_url_template(template)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("/{nope}", "unknown template variable {nope} (known: dir, ext, name, path, stem)"),
        ("/{Path}", "unknown template variable {Path} (known: dir, ext, name, path, stem)"),
        ("/{path.upper}", "unknown template variable {path.upper}"),
        ("/{0}", "unknown template variable {0}"),
        ("/{}", "empty template variable {}"),
        ("/{path:>10}", "template variable {path:>10} has a format spec"),
        ("/{path:}", "template variable {path:} has a format spec"),
        ("/{path!r}", "template variable {path!r} has a conversion"),
        ("/{path", "unclosed '{' at position 1"),
        ("/{a{path}", "unclosed '{' at position 1"),
        ("/path}", "single '}' at position 5"),
        ("path/{name}", "must start with '/' or '{'"),
        ("https://example.com/{path}", "must start with '/' or '{'"),
        ("", "empty URL template"),
        ("/*/{path}", "'*' is allowed only as the last character"),
        ("/{path}**", "'*' is allowed only as the last character"),
    ],
)
def test_invalid_templates(template: str, message: str) -> None:
    """check_url_template rejects each mistake with a specific, user-facing message."""
    with pytest.raises(ValueError, match=re.escape(message)):
        check_url_template(template)


def test_unknown_variable_message_is_exact() -> None:
    """The unknown-variable message is exactly the documented line."""
    expected = "unknown template variable {nope} (known: dir, ext, name, path, stem)"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        check_url_template("/{nope}")


def test_mapper_names_the_bad_rule() -> None:
    """Mapper refuses a bad pattern or template, naming the rule's index."""
    with pytest.raises(ValueError, match=re.escape("rules[1]: unknown template variable {x}")):
        Mapper([Rule("**", WWW, ("/{path}",)), Rule("**", WWW, ("/{x}",))])
    with pytest.raises(ValueError, match=re.escape("rules[0]: pattern '!a'")):
        Mapper([Rule("!a", WWW, ("/{path}",))])


# --- patterns --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("**/index.html", "index.html", True),
        ("**/index.html", "a/b/index.html", True),
        ("**/index.html", "a/index.html.bak", False),
        ("*.html", "deep/down/x.html", True),
        ("/top.html", "top.html", True),
        ("/top.html", "sub/top.html", False),
        ("docs/", "docs/a/b.html", True),
        ("docs/", "docs", False),
        ("a/**/b", "a/x/y/b", True),
        ("a/**/b", "a/b", True),
        ("img/*.png", "img/x.png", True),
        ("img/*.png", "img/sub/x.png", False),
        ("**", "anything/at/all", True),
        ("\\#x", "#x", True),
        ("[ab].txt", "b.txt", True),
        ("[ab].txt", "c.txt", False),
        # pathspec 1.1.1 gets these wrong (no re.DOTALL, `$` before a final newline)
        ("**/index.html", "a\nb/index.html", True),
        ("a/**/b", "a/x\ny/b", True),
        ("**/index.html", "index.html\n", False),
    ],
)
def test_compile_match_follows_gitignore(pattern: str, path: str, matches: bool) -> None:
    """Patterns match paths as the same .gitignore line would, newlines in names included."""
    assert compile_match(pattern)(path) is matches


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("!*.html", "negation"),
        ("", "matches nothing"),
        ("   ", "matches nothing"),
        ("# comment", "matches nothing"),
        ("/", "matches nothing"),
        ("a[b", "matches nothing"),
        ("trailing\\", "not a valid gitignore pattern"),
    ],
)
def test_compile_match_rejects_bad_patterns(pattern: str, message: str) -> None:
    """Patterns that could never match, negations and invalid ones raise ValueError."""
    with pytest.raises(ValueError, match=message):
        compile_match(pattern)


PATTERNS = ["**", "*.html", "**/index.html", "docs/", "/a*", "a/**/b", "[!a]*", "*/x/**"]
NO_NEWLINE_PATH = st.lists(
    st.text(alphabet="abxdochtml.*/-é", min_size=1, max_size=6), min_size=1, max_size=4
).map("/".join)


@given(pattern=st.sampled_from(PATTERNS), path=NO_NEWLINE_PATH)
def test_compile_match_agrees_with_gitignorespec(pattern: str, path: str) -> None:
    """Without newlines in names, compile_match decides exactly as pathspec's GitIgnoreSpec."""
    assert compile_match(pattern)(path) is GitIgnoreSpec.from_lines([pattern]).match_file(path)


# --- normalise and encode_path ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [("", "/"), ("/", "/"), ("//", "/"), ("a/b", "/a/b"), ("/a//b///c/", "/a/b/c/"), ("/*", "/*")],
)
def test_normalise(url: str, expected: str) -> None:
    """normalise gives one leading slash and no runs of slashes."""
    assert normalise(url) == expected


# --- properties ------------------------------------------------------------------------------

# Names drawn from everything, lone surrogates included, with the awkward characters made likely.
NAME_CHAR = st.one_of(
    st.sampled_from([*"/*?%#~ .\t\n\x7f+&=é", "\udce9", "\U0001f600"]),
    st.characters(exclude_categories=()),
)
ANY_PATH = st.text(alphabet=NAME_CHAR, max_size=40)
TEMPLATE = st.builds(
    lambda parts, star: "/" + "".join(parts) + ("*" if star else ""),
    st.lists(
        st.one_of(
            st.sampled_from([f"{{{f}}}" for f in sorted(TEMPLATE_FIELDS)]),
            st.text(alphabet="ab/ .?%~é-", max_size=4),
        ),
        max_size=5,
    ),
    st.booleans(),
)
VALID_URL = re.compile(r"/[\x21-\x7e]*")
BAD_PERCENT = re.compile(r"%(?![0-9A-F]{2})")


@given(path=ANY_PATH, templates=st.lists(TEMPLATE, min_size=1, max_size=3))
def test_every_mapped_url_is_a_valid_cloudfront_path(path: str, templates: list[str]) -> None:
    """Whatever the name and template, every URL sent is a path CloudFront accepts."""
    mapped = Mapper([Rule("**", ("www", "cdn"), tuple(templates))]).map("docroot", path)
    for urls in mapped.urls.values():
        assert urls
        assert len(set(urls)) == len(urls)
        for url in urls:
            assert VALID_URL.fullmatch(url), url
            assert "*" not in url[:-1], url
            assert "//" not in url, url
            assert len(url) <= 4000
            assert not BAD_PERCENT.search(url), url
    for url, reason in mapped.rejected:
        assert url not in {u for urls in mapped.urls.values() for u in urls}
        assert reason


@given(path=ANY_PATH, templates=st.lists(TEMPLATE, min_size=1, max_size=3))
def test_mapping_is_deterministic(path: str, templates: list[str]) -> None:
    """Two mappers built from the same rules map a path identically, every time."""
    rules = [Rule("*.html", WWW, ()), Rule("**", WWW, tuple(templates))]
    first, second = Mapper(rules), Mapper(rules)
    result = first.map("docroot", path)
    assert result == first.map("docroot", path) == second.map("docroot", path)


SAFE_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"#%<>[\\]^`{|}~')


@given(path=st.text(alphabet=SAFE_CHARS).map(lambda s: "/" + s))
def test_encode_path_is_idempotent_on_safe_paths(path: str) -> None:
    """A path that needs no encoding comes back unchanged, however often it is encoded."""
    assert encode_path(path) == path
    assert encode_path(encode_path(path)) == path


@given(raw=st.binary(max_size=40))
def test_encode_path_loses_no_byte(raw: bytes) -> None:
    """Decoding the encoded path gives back the exact bytes of the name, valid UTF-8 or not."""
    name = raw.decode("utf-8", "surrogateescape")
    assert unquote_to_bytes(encode_path(name)) == raw
