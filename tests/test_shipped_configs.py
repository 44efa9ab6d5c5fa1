"""The configs in config/ as an operator installs them (copied to /etc/invalidatord): every one
passes `check` and `map` through the real command line, and none names a relative path, which
would mean something else once the file is copied out of the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness import SHIPPED_CONFIGS, SHIPPED_ROOT, aws_test_env, installed_config

#: every ${VAR} a shipped config reads, with a value of the right shape: a config that grows
#: another one must say here what it takes
ENVIRONMENT = {"ASSETS_DISTRIBUTION_ID": "E3FROMTHEENV01"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = aws_test_env()
    env.update(ENVIRONMENT)
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _paths(data: dict[str, object]) -> list[tuple[str, str]]:
    """(key, value) of every path-valued key: state_dir and each source's root."""
    found = [("state_dir", str(data["state_dir"]))] if data.get("state_dir") else []
    sources = data.get("sources") or []
    assert isinstance(sources, list)
    for i, source in enumerate(sources):
        if "root" in source:
            found.append((f"sources[{i}].root", str(source["root"])))
    return found


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_no_shipped_config_names_a_relative_path(shipped: Path) -> None:
    """state_dir and every root are absolute, and every filesystem root is SHIPPED_ROOT (the
    one the README's install steps and the tests' installed copies stand for)."""
    data = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    for key, value in _paths(data):
        assert value.startswith("/"), f"{shipped.name}: {key}: {value!r} is relative"
    roots = [value for key, value in _paths(data) if key.endswith(".root")]
    assert all(root == SHIPPED_ROOT for root in roots), roots


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_every_variable_a_shipped_config_reads_is_known_here(shipped: Path) -> None:
    """The ${VAR}s of the shipped configs are exactly those ENVIRONMENT sets (so the check
    below runs them with the environment they expect)."""
    text = shipped.read_text(encoding="utf-8")
    values = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # not comments
    assert set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", values)) <= set(ENVIRONMENT)


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_check_and_map_pass_on_every_installed_shipped_config(
    shipped: Path, tmp_path: Path
) -> None:
    """`check` says valid (with each ${VAR} taken from the environment) and `map` prints a URL
    for the home page, per source of the config; a fleet invalidator, which has no sources,
    gets the one line saying so."""
    config = installed_config(shipped.name, tmp_path)
    check = _cli("check", "-c", str(config))
    assert check.returncode == 0, check.stderr
    assert f"{config}: valid" in check.stdout
    text = shipped.read_text(encoding="utf-8")
    for name, value in ENVIRONMENT.items():
        if "${" + name in text:
            assert value in check.stdout  # the environment's value, not the default
    cfg = yaml.safe_load(text)
    sources = [s["name"] for s in cfg.get("sources") or []]
    if not sources:
        mapped = _cli("map", "-c", str(config), "index.html")
        assert mapped.returncode == 2
        assert "no sources to map" in mapped.stderr
        assert "Traceback" not in mapped.stderr
        return
    for source in sources:
        mapped = _cli("map", "-c", str(config), "--source", source, "index.html")
        assert mapped.returncode == 0, mapped.stderr
        assert re.search(r"^\w+ /\S*index\.html$", mapped.stdout, re.MULTILINE), mapped.stdout


def test_a_shipped_config_whose_root_is_missing_says_so(tmp_path: Path) -> None:
    """minimal.yaml copied as is, on a host without its document root: `check` exits 2 naming
    the file, the line and the absolute root (not a path relative to /etc)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        (SHIPPED_CONFIGS[0].parent / "minimal.yaml")
        .read_text(encoding="utf-8")
        .replace(SHIPPED_ROOT, str(tmp_path / "no-such-root")),
        encoding="utf-8",
    )
    check = _cli("check", "-c", str(config))
    assert check.returncode == 2
    [line] = check.stderr.splitlines()
    assert line.startswith(f"{config}:12: sources[0].root:"), line
    assert str(tmp_path / "no-such-root") in line
