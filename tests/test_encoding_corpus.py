"""A corpus of awkward file names and the exact CloudFront path each one must become.

Every expected value is written out by hand from the rule in docs/cloudfront.md (percent-encode
non-ASCII, controls and the RFC 1738 unsafe set, nothing else; `?` from a name -> %3F; a `*` in
a name cuts the URL into a wildcard), never computed by the code under test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from invalidatord.mapping import Mapper, Rule, encode_path


def raw(data: bytes) -> str:
    """A name that is not valid UTF-8, as os.fsdecode hands it over."""
    return data.decode("utf-8", "surrogateescape")


# (id, path relative to the source root, CloudFront path for the template "/{path}")
CORPUS: list[tuple[str, str, str]] = [
    ("plain", "plain.html", "/plain.html"),
    ("space", "a b.html", "/a%20b.html"),
    ("nfc_e_acute", "caf\u00e9.html", "/caf%C3%A9.html"),
    ("nfd_e_acute", "cafe\u0301.html", "/cafe%CC%81.html"),
    ("cjk", "\u65e5\u672c\u8a9e.html", "/%E6%97%A5%E6%9C%AC%E8%AA%9E.html"),
    ("emoji", "\U0001f600.png", "/%F0%9F%98%80.png"),
    ("greek", "\u03a9.html", "/%CE%A9.html"),
    ("ligature", "\ufb01le.txt", "/%EF%AC%81le.txt"),
    ("nbsp", "a\u00a0b", "/a%C2%A0b"),
    ("zero_width_space", "a\u200bb", "/a%E2%80%8Bb"),
    ("byte_order_mark", "\ufeffx", "/%EF%BB%BFx"),
    ("percent", "100%.html", "/100%25.html"),
    ("percent20_literal", "a%20b.html", "/a%2520b.html"),
    ("percent7e_literal", "%7E.html", "/%257E.html"),
    ("tilde", "~user.html", "/%7Euser.html"),
    ("editor_backup", "index.html~", "/index.html%7E"),
    ("brackets", "a[1].html", "/a%5B1%5D.html"),
    ("braces", "a{b}.html", "/a%7Bb%7D.html"),
    ("hash", "a#b.html", "/a%23b.html"),
    ("leading_hash", "#top.html", "/%23top.html"),
    ("question", "a?b.html", "/a%3Fb.html"),
    ("question_equals", "page?id=1.html", "/page%3Fid=1.html"),
    ("plus", "a+b.html", "/a+b.html"),
    ("ampersand_equals", "a&b=c.html", "/a&b=c.html"),
    ("semicolon", "a;b.html", "/a;b.html"),
    ("colon", "12:30.html", "/12:30.html"),
    ("at", "me@host.html", "/me@host.html"),
    ("dollar", "$price.html", "/$price.html"),
    ("comma", "a,b.html", "/a,b.html"),
    ("apostrophe", "it's.html", "/it's.html"),
    ("double_quote", 'say "hi".html', "/say%20%22hi%22.html"),
    ("backquote", "a`b.html", "/a%60b.html"),
    ("pipe", "a|b.html", "/a%7Cb.html"),
    ("backslash", "a\\b.html", "/a%5Cb.html"),
    ("caret", "a^b.html", "/a%5Eb.html"),
    ("angle_brackets", "<a>.html", "/%3Ca%3E.html"),
    ("parens_bang", "(1)!.html", "/(1)!.html"),
    ("unreserved_marks", "-_.!'()", "/-_.!'()"),
    ("tab", "a\tb.html", "/a%09b.html"),
    ("newline", "a\nb.html", "/a%0Ab.html"),
    ("carriage_return", "a\rb.html", "/a%0Db.html"),
    ("control_01", "a\x01b.html", "/a%01b.html"),
    ("control_1f", "a\x1fb.html", "/a%1Fb.html"),
    ("delete", "a\x7fb.html", "/a%7Fb.html"),
    ("latin1_byte", raw(b"caf\xe9.html"), "/caf%E9.html"),
    ("invalid_bytes", raw(b"\xff\xfe.txt"), "/%FF%FE.txt"),
    ("truncated_utf8", raw(b"\xc3\xa9\xc3.txt"), "/%C3%A9%C3.txt"),
    ("overlong_slash", raw(b"\xc0\xaf.txt"), "/%C0%AF.txt"),
    ("leading_dot", ".htaccess", "/.htaccess"),
    ("double_dot_inside", "a..b.html", "/a..b.html"),
    ("trailing_space", "name ", "/name%20"),
    ("trailing_dot", "name.", "/name."),
    ("nested_dirs", "dir/sub dir/\u00fc.html", "/dir/sub%20dir/%C3%BC.html"),
    ("star_mid_name", "a*b.html", "/a*"),
    ("star_first", "*.html", "/*"),
    ("star_last", "end*", "/end*"),
    ("star_in_directory", "dir/a*b/c.html", "/dir/a*"),
    ("question_then_star", "a?b*c.html", "/a%3Fb*"),
    ("long_name_255", "x" * 255, "/" + "x" * 255),
    ("long_multibyte_name", "\u00e9" * 127, "/" + "%C3%A9" * 127),
]

IDS = [entry[0] for entry in CORPUS]


@pytest.fixture(scope="module")
def mapper() -> Mapper:
    return Mapper([Rule(match="**", distributions=("www",), urls=("/{path}",))])


def test_corpus_is_large_and_unique() -> None:
    """The corpus has at least 40 distinct names and ids."""
    assert len(CORPUS) >= 40
    assert len(set(IDS)) == len(CORPUS)
    assert len({name for _, name, _ in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("name", "expected"), [e[1:] for e in CORPUS], ids=IDS)
def test_name_maps_to_exact_cloudfront_path(mapper: Mapper, name: str, expected: str) -> None:
    """Each awkward name becomes exactly the hand-written CloudFront path through /{path}."""
    assert mapper.map("docroot", name).urls == {"www": (expected,)}


SAFE_FOR_ENCODE_PATH = [e for e in CORPUS if "?" not in e[1] and "*" not in e[1]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [e[1:] for e in SAFE_FOR_ENCODE_PATH],
    ids=[e[0] for e in SAFE_FOR_ENCODE_PATH],
)
def test_encode_path_agrees_on_names_without_query_or_wildcard(name: str, expected: str) -> None:
    """encode_path of '/' + name gives the same path when the name has no '?' or '*'."""
    assert encode_path("/" + name) == expected


def test_encode_path_keeps_query_and_wildcard_of_a_written_url() -> None:
    """encode_path treats '?' as a query string and '*' as a wildcard: a person wrote them."""
    assert encode_path("/search/?q=a b&lang=en") == "/search/?q=a%20b&lang=en"
    assert encode_path("/img/caf\u00e9*") == "/img/caf%C3%A9*"
    assert encode_path("/*") == "/*"


def test_corpus_names_survive_a_real_file_system(tmp_path: Path, mapper: Mapper) -> None:
    """Names written to disk and listed back (os.fsdecode) map to the same hand-written paths."""
    for index, (ident, name, expected) in enumerate(CORPUS):
        root = tmp_path / str(index)
        target = root / name
        target.parent.mkdir(parents=True)
        target.write_bytes(b"")
        listed = [
            os.path.relpath(os.path.join(directory, file), root)
            for directory, _, files in os.walk(root)
            for file in files
        ]
        assert listed == [name], ident
        assert mapper.map("docroot", listed[0]).urls == {"www": (expected,)}, ident
