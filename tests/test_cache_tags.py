"""Cache tags: `tags` templates become `#tag` items, validated as CloudFront requires."""

from __future__ import annotations

from pathlib import Path

import pytest

from invalidatord.config import load_config_text
from invalidatord.errors import ConfigError
from invalidatord.mapping import Mapper, Rule, tag_problem
from invalidatord.testing.cloudfront import CloudFrontEmulator, path_problem
from tests.harness import barrier, emulator_config, received, running_daemon


def mapper(*tags: str) -> Mapper:
    return Mapper([Rule("products/*.html", ("www",), ("/{path}",), tags=tags)])


def test_a_rule_with_tags_adds_tag_items_after_its_urls() -> None:
    """`product-{stem}` for products/shoe.html is `#product-shoe`, after the URL path."""
    mapped = mapper("product-{stem}", "all-products").map("docroot", "products/shoe.html")
    assert mapped.urls == {"www": ("/products/shoe.html", "#product-shoe", "#all-products")}


def test_tags_that_differ_only_in_case_are_one() -> None:
    """CloudFront compares tags case-insensitively: the first spelling is kept, once."""
    mapped = mapper("P-{stem}", "p-{stem}").map("docroot", "products/Shoe.html")
    assert mapped.urls == {"www": ("/products/Shoe.html", "#P-Shoe")}


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("a,b.html", "','"),
        ("a b.html", "' '"),
        ("caf\u00e9.html", "'\u00e9'"),
        ("a*b.html", "'*'"),
        ("x" * 300 + ".html", "longer than 256"),
    ],
)
def test_a_tag_a_file_name_makes_invalid_is_left_out_and_the_url_still_goes(
    name: str, why: str
) -> None:
    """A tag CloudFront would refuse (comma, space, non-ASCII, `*`, over 256 characters) is
    reported as rejected with the reason; the URL path of the same file is still sent."""
    mapped = mapper("product-{stem}").map("docroot", f"products/{name}")
    assert list(mapped.urls) == ["www"]
    assert all(u.startswith("/products/") for u in mapped.urls["www"])
    assert len(mapped.rejected) == 1
    assert mapped.rejected[0][0].startswith("#product-")
    assert why in mapped.rejected[0][1]


def test_tag_problem_accepts_printable_ascii_up_to_256() -> None:
    """Printable ASCII without comma and `*`, 1-256 characters, is a valid tag."""
    assert tag_problem("a" * 256) is None
    assert tag_problem("Prod_1.2-x/y") is None
    assert tag_problem("") == "it is empty"


CONFIG = """\
distributions:
  www: {{id: E2EXAMPLE12345{extra}}}
sources: [{{name: docroot, type: filesystem, root: {root}}}]
rules:
  - match: "products/*.html"
    urls: ["/{{path}}"]
    tags: ["product-{{stem}}"]
"""


def test_check_rejects_tags_on_a_rule_whose_distribution_lacks_cache_tags(tmp_path: Path) -> None:
    """`tags` to a distribution without `cache_tags: true` is a config error naming the rule's
    key and the distribution; with it, the config loads."""
    with pytest.raises(ConfigError) as caught:
        load_config_text(CONFIG.format(extra="", root=tmp_path), "c.yaml")
    assert caught.value.problems == [
        "c.yaml:7: rules[0].tags: cache tags need distributions with cache_tags: true; www has none"
    ]
    cfg = load_config_text(CONFIG.format(extra=", cache_tags: true", root=tmp_path), "c.yaml")
    assert cfg.mapping_rules()[0].tags == ("product-{stem}",)


def test_the_emulator_takes_tags_only_for_cache_tag_distributions() -> None:
    """As CloudFront: `#tag` is refused without CacheTagConfig, validated with it."""
    assert path_problem("#product-shoe") is not None
    assert path_problem("#product-shoe", cache_tags=True) is None
    assert path_problem("#a,b", cache_tags=True) is not None


@pytest.fixture
def docroot(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    (root / "products").mkdir(parents=True)
    return root


def test_a_rule_with_tags_sends_tag_items(
    tmp_path: Path, docroot: Path, cloudfront: CloudFrontEmulator
) -> None:
    """End to end: a changed product page sends its URL path and its `#product-...` tag to a
    cache_tags distribution; a name that makes the tag invalid still sends its URL."""
    cloudfront.cache_tag_distributions.add(cloudfront.distribution_id)
    config = emulator_config(
        tmp_path,
        docroot,
        cloudfront,
        extra={"distributions": {"www": {"id": cloudfront.distribution_id, "cache_tags": True}}},
        rules=[
            {"match": "products/*.html", "urls": ["/{path}"], "tags": ["product-{stem}"]},
            {"match": "**", "urls": ["/{path}"]},
        ],
    )
    with running_daemon(config) as proc:
        (docroot / "products/shoe.html").write_text("v2")
        (docroot / "products/a,b.html").write_text("v2")
        barrier(cloudfront, docroot)
        assert received(cloudfront) == {
            "/products/shoe.html",
            "#product-shoe",
            "/products/a,b.html",
            "/zz-sentinel.txt",
        }
        line = proc.wait_event("path_not_sendable", lambda e: e["path"] == "products/a,b.html")
        assert line["url"] == "#product-a,b"
