"""The config loader: the example configs load, and every malformed file yields exact lines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from invalidatord.config import (
    DEFAULT_CONFIG_PATH,
    Config,
    DebounceConfig,
    DistributionConfig,
    FilesystemSourceConfig,
    RuleConfig,
    S3PollSourceConfig,
    SqsSourceConfig,
    config_warnings,
    default_config_path,
    load_config,
    load_config_text,
    parse_duration,
    parse_listen,
    references,
)
from invalidatord.config.linemap import MAX_ALIAS_EXPANSION
from invalidatord.errors import ConfigError
from invalidatord.mapping import Mapper
from tests.harness import installed_config

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((REPO / "config").glob("*.yaml"))

#: Lines 1-7 of most cases; what a case adds starts at line 8.
VALID = """\
distributions:
  www:
    id: E2EXAMPLE12345
sources:
  - name: docroot
    type: filesystem
    root: site
"""

TOP_KEYS = (
    "state_dir, aws, distributions, sources, rules, debounce, invalidation, metrics, log, "
    "shutdown_timeout, fleet"
)
DURATION_HINT = "expected a duration such as 500ms, 2s, 5m or a number of seconds"


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with `site/` (a document root) and `afile`, made the current directory."""
    (tmp_path / "site").mkdir()
    (tmp_path / "afile").write_text("not a directory\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def problems(text: str) -> list[str]:
    """Write `config.yaml` in the current directory, load it, return the problem lines."""
    Path("config.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config("config.yaml")
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --- the shipped configs ---------------------------------------------------------------------


@pytest.mark.parametrize("shipped", EXAMPLES, ids=lambda p: p.name)
def test_shipped_configs_load_without_warnings(shipped: Path, tmp_path: Path) -> None:
    """Each config in config/ is valid once its absolute document root exists, and warns of
    nothing."""
    path = installed_config(shipped.name, tmp_path)
    cfg = load_config(path)
    assert cfg.source_path == path
    assert config_warnings(cfg) == []
    fs = [s for s in cfg.sources if isinstance(s, FilesystemSourceConfig)]
    if cfg.fleet is not None and cfg.fleet.role == "invalidator":
        assert fs == []  # the fleet queue is its only source of work
        return
    assert fs[0].root == tmp_path / "www"
    assert (fs[0].root / "index.html").is_file()


def test_both_shipped_configs_exist() -> None:
    """config/ holds exactly the example, the minimal config and the two fleet roles."""
    assert [p.name for p in EXAMPLES] == [
        "example.yaml",
        "fleet-invalidator.yaml",
        "fleet-publisher.yaml",
        "minimal.yaml",
    ]


def _nested_models(tp: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """(key suffix, model) for every model inside an annotation; dict values get `.*`."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        yield "", tp
    elif get_origin(tp) is dict:
        for suffix, model in _nested_models(get_args(tp)[1]):
            yield ".*" + suffix, model
    else:
        for arg in get_args(tp):
            yield from _nested_models(arg)


def _model_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    keys = set()
    for name, field in model.model_fields.items():
        if not field.exclude:
            keys.add(prefix + name)
            for suffix, nested in _nested_models(field.annotation):
                keys |= _model_keys(nested, f"{prefix}{name}{suffix}.")
    return keys


def _yaml_keys(data: Any, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            name = "*" if prefix == "distributions." else key
            keys.add(prefix + name)
            keys |= _yaml_keys(value, f"{prefix}{name}.")
    elif isinstance(data, list):
        for item in data:
            keys |= _yaml_keys(item, prefix)
    return keys


def test_example_sets_every_key_the_models_know() -> None:
    """example.yaml shows every key of every section, source type and rule (the fleet block:
    fleet-invalidator.yaml)."""
    data = yaml.safe_load((REPO / "config" / "example.yaml").read_text())
    fleet = yaml.safe_load((REPO / "config" / "fleet-invalidator.yaml").read_text())
    expected = _model_keys(Config)
    assert "sources.queue_url" in expected
    assert "distributions.*.id" in expected
    assert "fleet.dedup_window" in expected
    assert expected - _yaml_keys(data) - _yaml_keys({"fleet": fleet["fleet"]}) == set()


def test_example_rules_map_as_documented(tmp_path: Path) -> None:
    """The example's rules, handed to the Mapper, give the URLs its comments promise."""
    cfg = load_config(installed_config("example.yaml", tmp_path))
    mapper = Mapper(cfg.mapping_rules())
    assert mapper.map("docroot", "about/index.html").urls == {
        "www": ("/about/", "/about/index.html")
    }
    assert mapper.map("docroot", "drafts/new.html").urls == {}
    assert mapper.map("uploads", "a.jpg").urls == {
        "assets": ("/uploads/a.jpg",),
        "www": ("/uploads/a.jpg",),
    }
    assert cfg.rule_distributions(0) == ("assets", "www")


def test_minimal_config_takes_the_documented_defaults(tmp_path: Path) -> None:
    """Everything the minimal config leaves out takes the default the README documents."""
    cfg = load_config(installed_config("minimal.yaml", tmp_path))
    source = cfg.sources[0]
    assert isinstance(source, FilesystemSourceConfig)
    assert source.ignore == [".git/", "*.swp", "*.swx", "*~", ".#*", "4913"]
    assert (source.watcher, source.poll_interval, source.rescan_interval) == ("auto", 5.0, 600.0)
    assert source.watcher_process is True
    assert cfg.state_dir == Path("/var/lib/invalidatord")
    assert cfg.aws.region == "us-east-1"
    assert cfg.aws.endpoint_url is None
    assert [(r.match, r.urls, r.distribution) for r in cfg.rules] == [("**", ["/{path}"], None)]
    assert cfg.rule_distributions(0) == ("www",)
    assert (cfg.debounce.quiet, cfg.debounce.max_delay, cfg.debounce.max_pending) == (
        2.0,
        30.0,
        10000,
    )
    inv = cfg.invalidation
    assert (inv.headroom_files, inv.headroom_wildcards) == (100, 2)
    assert (inv.poll_interval, inv.reconcile_interval, inv.max_backoff) == (30.0, 300.0, 300.0)
    assert cfg.metrics.address == ("127.0.0.1", 9464)
    assert (cfg.log.format, cfg.log.level, cfg.shutdown_timeout) == ("auto", "info", 10.0)


# --- malformed files: one exact line each -----------------------------------------------------

RULE_WWW = "rules:\n  - match: '**'\n    distribution: {dist}\n    urls: ['/{{path}}']\n"
TWO_DISTRIBUTIONS = """\
distributions:
  www: {id: E2EXAMPLE12345}
  assets: {id: E3EXAMPLE67890}
sources:
  - {name: docroot, type: filesystem, root: site}
"""

CASES: list[tuple[str, str, list[str]]] = [
    (
        "unknown top-level key",
        VALID + "debounse: 2s\n",
        [
            f"config.yaml:8: debounse: unknown key 'debounse' (expected one of: {TOP_KEYS}); "
            "did you mean 'debounce'?"
        ],
    ),
    (
        "unknown nested key",
        VALID + "aws:\n  regoin: eu-west-1\n",
        [
            "config.yaml:9: aws.regoin: unknown key 'regoin' "
            "(expected one of: region, profile, endpoint_url, role_arn); did you mean 'region'?"
        ],
    ),
    (
        "unknown key in a source",
        VALID + "    watch: inotify\n",
        [
            "config.yaml:8: sources[0].watch: unknown key 'watch' (expected one of: name, type, "
            "root, ignore, watcher, poll_interval, watcher_process, rescan_interval, compare, "
            "hold_while); did you mean 'watcher'?"
        ],
    ),
    (
        "wrong type: text for an integer",
        VALID + "debounce:\n  max_pending: many\n",
        ["config.yaml:9: debounce.max_pending: expected a whole number, got 'many'"],
    ),
    (
        "wrong type: true for an integer",
        VALID + "invalidation:\n  headroom_wildcards: true\n",
        ["config.yaml:9: invalidation.headroom_wildcards: expected a whole number, got true"],
    ),
    (
        "wrong type: a string for a section",
        VALID + "aws: us-east-1\n",
        ["config.yaml:8: aws: expected a mapping of keys, got 'us-east-1'"],
    ),
    (
        "wrong type: a string for a list",
        VALID + "rules: /{path}\n",
        ["config.yaml:8: rules: expected a list, got '/{path}'"],
    ),
    (
        "wrong choice",
        VALID + "log:\n  level: loud\n",
        ["config.yaml:9: log.level: expected 'debug', 'info', 'warning' or 'error', got 'loud'"],
    ),
    (
        "missing required section",
        "distributions:\n  www:\n    id: E2EXAMPLE12345\n",
        ["config.yaml:1: sources: required key missing"],
    ),
    (
        "missing required key points at its parent",
        VALID.replace("    root: site\n", "    watcher: polling\n"),
        ["config.yaml:5: sources[0].root: required key missing"],
    ),
    (
        "missing source type",
        VALID.replace("    type: filesystem\n", ""),
        [
            "config.yaml:5: sources[0].type: required key missing "
            "(expected one of: filesystem, sqs, s3-poll)"
        ],
    ),
    (
        "fleet queue not FIFO",
        VALID + "fleet:\n  role: publisher\n  queue_url: https://sqs.us-east-1.amazonaws.com/1/q\n",
        [
            "config.yaml:10: fleet.queue_url: must be an SQS FIFO queue (its name ends in .fifo; "
            "order and deduplication depend on it), got 'https://sqs.us-east-1.amazonaws.com/1/q'"
        ],
    ),
    (
        "fleet without a role",
        VALID + "fleet:\n  queue_url: https://sqs.us-east-1.amazonaws.com/1/q.fifo\n",
        ["config.yaml:8: fleet.role: required key missing"],
    ),
    (
        "fleet role unknown",
        VALID + "fleet: {role: leader, queue_url: https://sqs.us-east-1.amazonaws.com/1/q.fifo}\n",
        ["config.yaml:8: fleet.role: expected 'publisher' or 'invalidator', got 'leader'"],
    ),
    (
        "no sources outside a fleet invalidator",
        "distributions:\n  www: {id: E2EXAMPLE12345}\nsources: []\n"
        "fleet: {role: publisher, queue_url: https://sqs.us-east-1.amazonaws.com/1/q.fifo}\n",
        [
            "config.yaml:3: sources: must not be empty (only a fleet invalidator, "
            "fleet.role: invalidator, may have no sources)"
        ],
    ),
    (
        "unknown source type",
        VALID.replace("type: filesystem", "type: ftp"),
        [
            "config.yaml:6: sources[0].type: unknown type 'ftp' "
            "(expected one of: filesystem, sqs, s3-poll)"
        ],
    ),
    (
        "empty sources",
        "distributions:\n  www: {id: E2EXAMPLE12345}\nsources: []\n",
        [
            "config.yaml:3: sources: must not be empty (only a fleet invalidator, "
            "fleet.role: invalidator, may have no sources)"
        ],
    ),
    (
        "bad duration",
        VALID + "debounce:\n  quiet: fast\n",
        [f"config.yaml:9: debounce.quiet: {DURATION_HINT}, got 'fast'"],
    ),
    (
        "negative duration",
        VALID + "shutdown_timeout: -1\n",
        ["config.yaml:8: shutdown_timeout: a duration cannot be negative, got -1"],
    ),
    (
        "quiet longer than max_delay",
        VALID + "debounce:\n  max_delay: 10s\n  quiet: 1m\n",
        ["config.yaml:10: debounce.quiet: must not be longer than max_delay (10s), got 60s"],
    ),
    (
        "SQS wait time over the limit",
        VALID
        + "  - name: q\n    type: sqs\n    queue_url: http://127.0.0.1:1/q\n    wait_time: 25s\n",
        [
            "config.yaml:11: sources[1].wait_time: must be at most 20s "
            "(the SQS long-polling limit), got 25s"
        ],
    ),
    (
        "SQS visibility timeout under a second",
        VALID
        + "  - name: q\n    type: sqs\n    queue_url: http://127.0.0.1:1/q\n"
        + "    visibility_timeout: 0\n",
        [
            "config.yaml:11: sources[1].visibility_timeout: "
            "must be at least 1s (the SQS limit), got 0s"
        ],
    ),
    (
        "SQS visibility timeout over 12 hours",
        VALID
        + "  - name: q\n    type: sqs\n    queue_url: http://127.0.0.1:1/q\n"
        + "    visibility_timeout: 13h\n",
        [
            "config.yaml:11: sources[1].visibility_timeout: "
            "must be at most 12h (the SQS limit), got 46800s"
        ],
    ),
    (
        "SQS receivers below one",
        VALID
        + "  - name: q\n    type: sqs\n    queue_url: http://127.0.0.1:1/q\n    receivers: 0\n",
        ["config.yaml:11: sources[1].receivers: must be between 1 and 10, got 0"],
    ),
    (
        "hold_while marker outside the root",
        VALID + "    hold_while: [.deploying, ../elsewhere, /abs]\n",
        [
            "config.yaml:8: sources[0].hold_while[1]: must be a plain path under the root "
            "(no ., .. or //), got '../elsewhere'",
            "config.yaml:8: sources[0].hold_while[2]: must be relative to the root, got '/abs'",
        ],
    ),
    (
        "filesystem poll interval of zero",
        VALID + "    poll_interval: 0\n",
        ["config.yaml:8: sources[0].poll_interval: must be more than 0"],
    ),
    (
        "S3 poll source without a bucket",
        VALID + "  - name: b\n    type: s3-poll\n    prefix: site/\n",
        ["config.yaml:8: sources[1].bucket: required key missing"],
    ),
    (
        "S3 poll interval of zero",
        VALID + "  - name: b\n    type: s3-poll\n    bucket: site\n    interval: 0\n",
        ["config.yaml:11: sources[1].interval: must be more than 0"],
    ),
    (
        "S3 poll source with an SQS key",
        VALID + "  - name: b\n    type: s3-poll\n    bucket: site\n    wait_time: 5s\n",
        [
            "config.yaml:11: sources[1].wait_time: unknown key 'wait_time' "
            "(expected one of: name, type, bucket, prefix, interval, compare)"
        ],
    ),
    (
        "integer out of range",
        VALID + "invalidation:\n  headroom_files: 3000\n",
        ["config.yaml:9: invalidation.headroom_files: must be between 0 and 2999, got 3000"],
    ),
    (
        "unknown distribution in a rule",
        VALID + RULE_WWW.format(dist="nope"),
        ["config.yaml:10: rules[0].distribution: unknown distribution 'nope' (known: www)"],
    ),
    (
        "unknown distribution in a rule's list",
        VALID + RULE_WWW.format(dist="[www, nope]"),
        ["config.yaml:10: rules[0].distribution[1]: unknown distribution 'nope' (known: www)"],
    ),
    (
        "missing distribution with two distributions",
        TWO_DISTRIBUTIONS + "rules:\n  - match: '**'\n    urls: ['/{path}']\n",
        [
            "config.yaml:7: rules[0].distribution: required when more than one distribution "
            "is configured (known: assets, www)"
        ],
    ),
    (
        "default rule with two distributions",
        TWO_DISTRIBUTIONS,
        [
            "config.yaml:1: rules: required when more than one distribution is configured, "
            "because the default rule names no distribution (known: assets, www)"
        ],
    ),
    (
        "unknown source in a rule",
        VALID + "rules:\n  - match: '**'\n    source: uploads\n    urls: ['/{path}']\n",
        ["config.yaml:10: rules[0].source: unknown source 'uploads' (known: docroot)"],
    ),
    (
        "bad glob in a rule",
        VALID + "rules:\n  - match: '[z-a]'\n    urls: ['/{path}']\n",
        [
            "config.yaml:9: rules[0].match: pattern '[z-a]' is not a valid gitignore pattern: "
            "bad character range z-a"
        ],
    ),
    (
        "bad pattern in an ignore list",
        VALID + "    ignore: ['*.swp', 'foo\\']\n",
        ["config.yaml:8: sources[0].ignore[1]: not a valid gitignore-style pattern: 'foo\\\\'"],
    ),
    (
        "unknown template variable",
        VALID + "rules:\n  - match: '**'\n    urls:\n      - /{path}\n      - /{nope}\n",
        [
            "config.yaml:12: rules[0].urls[1]: unknown template variable {nope} "
            "(known: dir, ext, name, path, stem)"
        ],
    ),
    (
        "nonexistent root",
        VALID.replace("root: site", "root: nowhere"),
        ["config.yaml:7: sources[0].root: does not exist: {tmp}/nowhere"],
    ),
    (
        "root that is a file",
        VALID.replace("root: site", "root: afile"),
        ["config.yaml:7: sources[0].root: is not a directory: {tmp}/afile"],
    ),
    (
        "duplicate source names",
        VALID + "  - name: docroot\n    type: filesystem\n    root: site\n",
        ["config.yaml:8: sources[1].name: duplicate source name 'docroot' (also sources[0])"],
    ),
    (
        "bad distribution id",
        VALID.replace("E2EXAMPLE12345", "e2example"),
        [
            "config.yaml:3: distributions.www.id: expected a CloudFront distribution id "
            "(upper-case letters and digits, such as E2EXAMPLE12345), got 'e2example'"
        ],
    ),
    (
        "bad endpoint URL",
        VALID + "aws:\n  endpoint_url: 127.0.0.1:5000\n",
        [
            "config.yaml:9: aws.endpoint_url: expected an http:// or https:// URL, "
            "got '127.0.0.1:5000'"
        ],
    ),
    (
        "IPv6 listen address without brackets",
        VALID + "metrics:\n  listen: '::1:9464'\n",
        [
            "config.yaml:9: metrics.listen: an IPv6 address goes in brackets, such as "
            "[::1]:9464, got '::1:9464'"
        ],
    ),
    (
        "duplicate key",
        VALID + "debounce: {quiet: 1s}\ndebounce: {quiet: 2s}\n",
        ["config.yaml:9: debounce: duplicate key (first at line 8)"],
    ),
    (
        "source_path is not read from the file",
        VALID + "source_path: /etc/other.yaml\n",
        [f"config.yaml:8: source_path: unknown key 'source_path' (expected one of: {TOP_KEYS})"],
    ),
    (
        "YAML syntax error",
        VALID + "debounce:\n  quiet: 2s\n   max_delay: 5s\n",
        ["config.yaml:10: invalid YAML: mapping values are not allowed here"],
    ),
    (
        "unclosed flow sequence",
        VALID + "rules: [\n",
        ["config.yaml:9: invalid YAML: expected the node content, but found '<stream end>'"],
    ),
    (
        "empty file",
        "",
        ["config.yaml:1: the file is empty; a config needs at least distributions: and sources:"],
    ),
    (
        "only comments",
        "# nothing here yet\n\n",
        ["config.yaml:1: the file is empty; a config needs at least distributions: and sources:"],
    ),
    (
        "top level not a mapping",
        "- distributions\n- sources\n",
        [
            "config.yaml:1: the top level must be a mapping of keys such as distributions: and "
            "sources:, got a list"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_config_yields_exact_lines(workdir: Path, text: str, expected: list[str]) -> None:
    """Each kind of mistake is reported as exactly these FILE:LINE: KEY.PATH: message lines."""
    assert problems(text) == [line.replace("{tmp}", str(workdir)) for line in expected]


def test_several_problems_are_all_reported_in_line_order(workdir: Path) -> None:
    """Unrelated mistakes across sections, and cross-section ones, come out together, by line."""
    text = """\
aws:
  region: us-east-1
  regoin: eu-west-1
distributions:
  www:
    id: e2bad
sources:
  - name: docroot
    type: filesystem
    root: nowhere
    poll_interval: soon
  - name: docroot
    type: sqs
    queue_url: ftp://queue
    receivers: 11
rules:
  - match: "**"
    distribution: nope
    source: ghost
    urls: ["/{nope}"]
debounce:
  quiet: fast
"""
    assert problems(text) == [
        "config.yaml:3: aws.regoin: unknown key 'regoin' "
        "(expected one of: region, profile, endpoint_url, role_arn); did you mean 'region'?",
        "config.yaml:6: distributions.www.id: expected a CloudFront distribution id "
        "(upper-case letters and digits, such as E2EXAMPLE12345), got 'e2bad'",
        f"config.yaml:10: sources[0].root: does not exist: {workdir}/nowhere",
        f"config.yaml:11: sources[0].poll_interval: {DURATION_HINT}, got 'soon'",
        "config.yaml:12: sources[1].name: duplicate source name 'docroot' (also sources[0])",
        "config.yaml:14: sources[1].queue_url: expected an http:// or https:// URL, "
        "got 'ftp://queue'",
        "config.yaml:15: sources[1].receivers: must be between 1 and 10, got 11",
        "config.yaml:18: rules[0].distribution: unknown distribution 'nope' (known: www)",
        "config.yaml:19: rules[0].source: unknown source 'ghost' (known: docroot)",
        "config.yaml:20: rules[0].urls[0]: unknown template variable {nope} "
        "(known: dir, ext, name, path, stem)",
        f"config.yaml:22: debounce.quiet: {DURATION_HINT}, got 'fast'",
    ]


def test_cross_checks_alone_are_reported_with_locations(workdir: Path) -> None:
    """When every field is valid, the cross-section checks still name line and key."""
    text = TWO_DISTRIBUTIONS + (
        "rules:\n"
        "  - {match: '*.css', distribution: assets, urls: ['/{path}']}\n"
        "  - {match: '**', source: docroot, urls: ['/{path}']}\n"
    )
    assert problems(text) == [
        "config.yaml:8: rules[1].distribution: required when more than one distribution is "
        "configured (known: assets, www)",
    ]


def test_missing_file_is_one_line_naming_path_and_os_error(tmp_path: Path) -> None:
    """A file that is not there, or a directory, gives one line with the path and the OS error."""
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.problems == [
        f"{missing}: cannot read the config file: No such file or directory"
    ]
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert caught.value.problems == [f"{tmp_path}: cannot read the config file: Is a directory"]


def test_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 give one line naming the file and where, not a traceback."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"distributions:\n  w\xff: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.problems == [
        f"{path}: cannot read the config file: not UTF-8 text (invalid start byte at byte 18)"
    ]


def test_relative_root_resolves_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative root is taken from the config file's folder, whatever the current directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "www" / "html").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = tmp_path / "etc" / "config.yaml"
    path.write_text(VALID.replace("root: site", "root: ../www/html") + "state_dir: state\n")
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path)
    source = cfg.sources[0]
    assert isinstance(source, FilesystemSourceConfig)
    assert source.root == tmp_path / "www" / "html"
    assert cfg.state_dir == tmp_path / "etc" / "state"
    assert cfg.source_path == path


def test_load_config_text_uses_base_dir_and_filename(tmp_path: Path) -> None:
    """Text configs resolve roots against `base_dir` and name `filename` in their problems."""
    (tmp_path / "site").mkdir()
    cfg = load_config_text(VALID, base_dir=tmp_path)
    source = cfg.sources[0]
    assert isinstance(source, FilesystemSourceConfig)
    assert source.root == tmp_path / "site"
    assert cfg.source_path is None
    with pytest.raises(ConfigError) as caught:
        load_config_text(VALID + "extra: 1\n", filename="inline.yaml", base_dir=tmp_path)
    assert caught.value.problems == [
        f"inline.yaml:8: extra: unknown key 'extra' (expected one of: {TOP_KEYS})"
    ]


def test_null_section_means_its_defaults(workdir: Path) -> None:
    """A section whose keys are all commented out (`debounce:` alone) takes its defaults."""
    cfg = load_config_text(VALID + "debounce:\n  # quiet: 5s\nmetrics:\n", base_dir=workdir)
    assert cfg.debounce.quiet == 2.0
    assert cfg.metrics.listen == "127.0.0.1:9464"


def test_every_section_parses_its_values(workdir: Path) -> None:
    """Durations, lists of distributions, SQS settings and `rescan_interval: 0` come out typed."""
    text = VALID + (
        "    rescan_interval: 0\n"
        "  - {name: q, type: sqs, queue_url: 'http://127.0.0.1:1/q', wait_time: 0, receivers: 3}\n"
        "rules:\n"
        "  - {match: '**/index.html', distribution: [www, www], urls: ['/{dir}/', '/{path}']}\n"
        "debounce: {quiet: 500ms, max_delay: 1.5m}\n"
        "metrics: {listen: '[::1]:0'}\n"
        "log: {level: DEBUG, format: json}\n"
    )
    cfg = load_config_text(text, base_dir=workdir)
    fs, sqs = cfg.sources
    assert isinstance(fs, FilesystemSourceConfig)
    assert isinstance(sqs, SqsSourceConfig)
    assert fs.rescan_interval is None
    assert (sqs.wait_time, sqs.visibility_timeout, sqs.receivers, sqs.prefix) == (0.0, 60.0, 3, "")
    assert cfg.rule_distributions(0) == ("www",)
    assert (cfg.debounce.quiet, cfg.debounce.max_delay) == (0.5, 90.0)
    assert cfg.metrics.address == ("::1", 0)
    assert (cfg.log.level, cfg.log.format) == ("debug", "json")
    assert cfg.source("q") is sqs


def test_s3_poll_source_parses_with_its_defaults(workdir: Path) -> None:
    """An s3-poll source needs only a bucket: prefix "" and a 5-minute interval by default;
    it draws no warning (it has no wait_time to be 0)."""
    text = VALID + (
        "  - {name: b, type: s3-poll, bucket: site-bucket}\n"
        "  - {name: c, type: s3-poll, bucket: other, prefix: public/, interval: 30s}\n"
    )
    cfg = load_config_text(text, base_dir=workdir)
    b, c = cfg.source("b"), cfg.source("c")
    assert isinstance(b, S3PollSourceConfig)
    assert isinstance(c, S3PollSourceConfig)
    assert (b.bucket, b.prefix, b.interval) == ("site-bucket", "", 300.0)
    assert (c.bucket, c.prefix, c.interval) == ("other", "public/", 30.0)
    assert config_warnings(cfg) == []


def test_config_is_frozen(workdir: Path) -> None:
    """A loaded config cannot be changed in place (reload builds a new one)."""
    cfg = load_config_text(VALID, base_dir=workdir)
    with pytest.raises(ValidationError):
        cfg.shutdown_timeout = 1.0  # type: ignore[misc]


def test_reference_check_runs_once_and_reports_beside_field_errors(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cross-section check runs once per load, and its problems are reported together with
    field errors elsewhere in the file."""
    calls: list[object] = []
    original = references.reference_problems

    def counted(data: Any) -> Any:
        calls.append(data)
        return original(data)

    monkeypatch.setattr(references, "reference_problems", counted)
    text = VALID + "rules:\n  - {match: '**', urls: ['/{path}'], distribution: nope}\n"
    with pytest.raises(ConfigError) as caught:
        load_config_text(text.replace("id: E2EXAMPLE12345", "id: lower"), "c.yaml", workdir)
    assert caught.value.problems == [
        "c.yaml:3: distributions.www.id: expected a CloudFront distribution id (upper-case "
        "letters and digits, such as E2EXAMPLE12345), got 'lower'",
        "c.yaml:9: rules[0].distribution: unknown distribution 'nope' (known: www)",
    ]
    assert len(calls) == 1


def test_source_configs_describe_every_setting(workdir: Path) -> None:
    """Each source type's describe() is one line naming where it looks and every setting."""
    text = VALID + (
        "    ignore: ['*.tmp']\n    watcher: polling\n    rescan_interval: 0\n"
        "  - {name: q, type: sqs, queue_url: 'http://127.0.0.1:1/q', receivers: 3}\n"
        "  - {name: b, type: s3-poll, bucket: site-bucket}\n"
    )
    fs, sqs, poll = load_config_text(text, base_dir=workdir).sources
    assert fs.describe() == (
        f"docroot (filesystem): {workdir / 'site'}; ignore: [*.tmp], watcher: polling, "
        "poll_interval: 5s, watcher_process: true, rescan_interval: null, compare: content, "
        "hold_while: []"
    )
    assert sqs.describe() == (
        'q (sqs): http://127.0.0.1:1/q; bucket: null, prefix: "", wait_time: 20s, '
        "visibility_timeout: 60s, receivers: 3, compare: content"
    )
    assert poll.describe() == "b (s3-poll): s3://site-bucket/; interval: 300s, compare: content"


def test_configs_built_in_python_are_cross_checked(workdir: Path) -> None:
    """Config(...) from Python values applies the same rule checks, located by key path."""
    source = FilesystemSourceConfig(name="docroot", type="filesystem", root=workdir / "site")
    with pytest.raises(ValidationError) as caught:
        Config(
            distributions={"www": DistributionConfig(id="E1")},
            sources=[source],
            rules=[RuleConfig(match="**", distribution="nope", urls=[])],
        )
    (error,) = caught.value.errors()
    assert error["loc"] == ("rules", 0, "distribution")
    assert error["msg"] == "unknown distribution 'nope' (known: www)"
    cfg = Config(
        distributions={"www": DistributionConfig(id="E1")},
        sources=[source],
        debounce=DebounceConfig(quiet=timedelta(milliseconds=250)),
    )
    assert cfg.debounce.quiet == 0.25


# --- durations and addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("90", 90.0),
        (" 2 s ", 2.0),
        (".5s", 0.5),
        ("0", 0.0),
        (0, 0.0),
        (3, 3.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration_accepts(value: str | float, seconds: float) -> None:
    """Units ms, s, m, h, bare numbers and numeric strings all become seconds."""
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", f"{DURATION_HINT}, got 'fast'"),
        ("", f"{DURATION_HINT}, got ''"),
        ("5 minutes", f"{DURATION_HINT}, got '5 minutes'"),
        ("2d", f"{DURATION_HINT}, got '2d'"),
        ("5M", f"{DURATION_HINT}, got '5M'"),
        ("-1s", f"{DURATION_HINT}, got '-1s'"),
        (True, f"{DURATION_HINT}, got true"),
        (-1, "a duration cannot be negative, got -1"),
        (float("inf"), "expected a finite duration, got inf"),
        (float("nan"), "expected a finite duration, got nan"),
    ],
)
def test_parse_duration_rejects(value: str | float, message: str) -> None:
    """Anything else is a ValueError whose message is ready to show."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_parse_listen_accepts(value: str, address: tuple[str, int]) -> None:
    """HOST:PORT and [IPv6]:PORT become (host, port)."""
    assert parse_listen(value) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("9464", "expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464, got '9464'"),
        (
            "127.0.0.1:http",
            "expected HOST:PORT such as 127.0.0.1:9464 or [::1]:9464, got '127.0.0.1:http'",
        ),
        ("127.0.0.1:70000", "port must be 0-65535, got 70000"),
        ("[nope]:1", "not an IPv6 address in brackets: '[nope]:1'"),
        ("bad host:1", "not a host name or address: 'bad host'"),
    ],
)
def test_parse_listen_rejects(value: str, message: str) -> None:
    """Anything that is not HOST:PORT is a ValueError saying what was expected."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_listen(value)


def test_default_config_path_honours_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """INVALIDATORD_CONFIG overrides the default path; unset or empty means the default."""
    monkeypatch.delenv("INVALIDATORD_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == "/etc/invalidatord/config.yaml"
    monkeypatch.setenv("INVALIDATORD_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
    monkeypatch.setenv("INVALIDATORD_CONFIG", "/srv/invalidatord.yaml")
    assert default_config_path() == "/srv/invalidatord.yaml"


# --- warnings --------------------------------------------------------------------------------


def test_warnings_flag_likely_mistakes_with_their_lines(workdir: Path) -> None:
    """Public metrics, quiet 0, an unreachable rule, an unused or repeated distribution,
    a root of / and no long polling are each flagged at their line."""
    text = """\
distributions:
  www: {id: E2EXAMPLE12345}
  copy: {id: E2EXAMPLE12345}
sources:
  - {name: everything, type: filesystem, root: /}
  - {name: q, type: sqs, queue_url: 'http://127.0.0.1:1/q', wait_time: 0}
rules:
  - {match: '**', distribution: www, urls: ['/{path}']}
  - {match: '*.css', distribution: www, urls: ['/{path}']}
debounce: {quiet: 0}
metrics: {listen: '0.0.0.0:9464'}
"""
    Path("config.yaml").write_text(text)
    assert config_warnings(load_config("config.yaml")) == [
        "config.yaml:3: distributions.copy: no rule applies to this distribution",
        "config.yaml:3: distributions.copy.id: same CloudFront id as distributions.www",
        "config.yaml:5: sources[0].root: watches the whole filesystem; is that intended?",
        "config.yaml:6: sources[1].wait_time: 0 turns long polling off: many more SQS requests",
        "config.yaml:9: rules[1]: unreachable: rules[0] (match '**') already matches every path",
        "config.yaml:10: debounce.quiet: 0 submits every change on its own, without batching "
        "bursts",
        "config.yaml:11: metrics.listen: 0.0.0.0 is reachable from other machines, and /metrics "
        "and /healthz have no authentication",
    ]


def test_warnings_on_state_dir_inside_root_and_unscoped_shadowing(workdir: Path) -> None:
    """A journal inside a watched root is flagged; a catch-all limited to one source does not
    shadow rules for other sources."""
    text = VALID + (
        "state_dir: site/.state\n"
        "rules:\n"
        "  - {match: '**', source: docroot, urls: ['/{path}']}\n"
        "  - {match: '*.css', urls: ['/{path}']}\n"
    )
    cfg = load_config_text(text, base_dir=workdir)
    assert config_warnings(cfg) == [
        "<config>:8: state_dir: is inside the root of source 'docroot': "
        "journal writes would be seen as changes",
    ]


def test_no_warnings_for_a_careful_config(workdir: Path) -> None:
    """Loopback metrics, a positive quiet and rules in a sensible order warn of nothing."""
    cfg = load_config_text(VALID + "metrics: {listen: 'localhost:9464'}\n", base_dir=workdir)
    assert config_warnings(cfg) == []


def test_config_errors_never_escape_as_tracebacks(workdir: Path) -> None:
    """Odd but parseable YAML (anchors, merge keys, non-string keys, tags) gives problem lines."""
    text = VALID + (
        "base: &b {quiet: 1s}\ndebounce:\n  <<: *b\n  max_delay: 5s\n1: one\nlog: !!set {json}\n"
    )
    assert problems(text) == [
        f"config.yaml:8: base: unknown key 'base' (expected one of: {TOP_KEYS})",
        "config.yaml:12: key 1 is not a string",
        "config.yaml:13: log: expected a mapping of keys, got a set",
    ]


# --- alias bombs -----------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """The classic alias bomb: `levels` lists of nine aliases to the level before (9**levels)."""
    out = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, levels):
        items = ", ".join([f"*a{level - 1}"] * 9)
        out.append(f"a{level}: &a{level} [{items}]")
    return "\n".join(out) + "\n"


def test_an_alias_bomb_is_refused_at_the_line_of_the_alias_that_expands_most(
    workdir: Path,
) -> None:
    """A "billion laughs" file is one located problem (never a MemoryError): the aliases are
    measured on the composed graph before anything expands them."""
    text = VALID + billion_laughs()
    assert problems(text) == [
        f"config.yaml:{7 + 9}: invalid YAML: aliases expand to more than {MAX_ALIAS_EXPANSION} "
        "values (an alias bomb?); write the values out or reuse fewer of them"
    ]


def test_aliases_that_expand_modestly_still_load(workdir: Path) -> None:
    """Anchors reused a few times (shared settings, a 3**9 list below the bound) load, and
    their keys are located as usual."""
    text = VALID + (
        "  - &fs {name: second, type: filesystem, root: site, watcher: polling}\n"
        "rules:\n"
        "  - &rule {match: '*.css', source: second, urls: ['/{path}']}\n"
        "  - *rule\n"
    )
    cfg = load_config_text(text, base_dir=workdir)
    assert [rule.match for rule in cfg.rules] == ["*.css", "*.css"]
    thrice = "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 3)}]\n" if i else "a0: &a0 [x, y, z]\n"
        for i in range(9)
    )
    assert MAX_ALIAS_EXPANSION > 3**9
    assert problems(VALID + thrice)[0].startswith("config.yaml:8: a0: unknown key 'a0'")


# --- ${VAR} from the environment -------------------------------------------------------------


def test_variables_are_substituted_in_values(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${VAR}`, `${VAR:-default}` (also for an empty VAR) and `$$` in scalar values; a plain
    scalar is typed from its substituted text, a quoted one stays a string."""
    monkeypatch.setenv("DIST_ID", "E3FROMENV")
    monkeypatch.setenv("RECEIVERS", "4")
    monkeypatch.setenv("EMPTY", "")
    monkeypatch.delenv("UNSET_PREFIX", raising=False)
    text = (
        "distributions:\n"
        "  www: {id: '${DIST_ID}'}\n"
        "sources:\n"
        "  - name: q\n"
        "    type: sqs\n"
        "    queue_url: https://sqs.${REGION:-eu-west-1}.amazonaws.com/1/q-${EMPTY:-dev}\n"
        "    prefix: ${UNSET_PREFIX:-public/}\n"
        "    bucket: cost-$$5-$x\n"
        "    receivers: ${RECEIVERS}\n"
    )
    cfg = load_config_text(text, base_dir=workdir)
    source = cfg.sources[0]
    assert isinstance(source, SqsSourceConfig)
    assert cfg.distributions["www"].id == "E3FROMENV"
    assert source.queue_url == "https://sqs.eu-west-1.amazonaws.com/1/q-dev"
    assert (source.prefix, source.bucket, source.receivers) == ("public/", "cost-$5-$x", 4)


def test_an_unset_variable_is_an_error_at_its_line_naming_it(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variable without a default that is not set, or a malformed `${`, is a located
    problem naming it; the other problems of the file are reported with it."""
    monkeypatch.delenv("NOPE_ID", raising=False)
    text = (
        "distributions:\n"
        "  www:\n"
        "    id: ${NOPE_ID}\n"
        "sources:\n"
        "  - {name: docroot, type: filesystem, root: 'site/${unclosed'}\n"
        "  - {name: x, type: filesystem, root: '${not a name}'}\n"
    )
    assert problems(text) == [
        "config.yaml:3: distributions.www.id: environment variable 'NOPE_ID' is not set "
        "(set it, or give a default: ${NOPE_ID:-value})",
        "config.yaml:5: sources[0].root: unclosed '${' in 'site/${unclosed' "
        "(write $$ for a literal $)",
        "config.yaml:6: sources[1].root: '${not a name}' is not a variable reference such as "
        "${NAME} or ${NAME:-default} (write $$ for a literal $)",
    ]


def test_variables_are_never_substituted_in_keys(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `${VAR}` written as a key stays as written (and is an unknown key)."""
    monkeypatch.setenv("KEY", "debounce")
    assert problems(VALID + "${KEY}: {quiet: 1s}\n") == [
        f"config.yaml:8: ['${{KEY}}']: unknown key '${{KEY}}' (expected one of: {TOP_KEYS})"
    ]


# --- warnings for sources that overlap -------------------------------------------------------


def test_filesystem_sources_watching_the_same_tree_are_warned_of(workdir: Path) -> None:
    """Two sources on one root, or one root inside another, draw a warning on the later or
    inner source: every change there would be seen twice."""
    (workdir / "site" / "blog").mkdir()
    (workdir / "other").mkdir()
    text = VALID + (
        "  - {name: again, type: filesystem, root: site}\n"
        "  - {name: blog, type: filesystem, root: site/blog}\n"
        "  - {name: other, type: filesystem, root: other}\n"
    )
    cfg = load_config_text(text, "config.yaml", base_dir=workdir)
    assert [w for w in config_warnings(cfg) if "seen twice" in w] == [
        "config.yaml:8: sources[1].root: same root as sources[0] ('docroot'): "
        "changes are seen twice",
        "config.yaml:9: sources[2].root: is inside the root of sources[0] ('docroot'): "
        "changes under it are seen twice",
        "config.yaml:9: sources[2].root: is inside the root of sources[1] ('again'): "
        "changes under it are seen twice",
    ]
