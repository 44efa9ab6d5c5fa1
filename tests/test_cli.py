"""The command line as a user runs it: a real subprocess, exit codes, one clear line per problem."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import SHIPPED_CONFIGS, DaemonProcess, aws_test_env, installed_config


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=env or aws_test_env(),
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("shipped", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_check_accepts_every_shipped_config(shipped: Path, tmp_path: Path) -> None:
    """Every file in config/ is valid: exit 0 and a summary naming its sources."""
    path = installed_config(shipped.name, tmp_path)
    result = cli("check", "-c", str(path))
    assert result.returncode == 0, result.stderr
    assert f"{path}: valid" in result.stdout
    assert "source " in result.stdout


def test_check_prints_every_setting_of_each_source(tmp_path: Path) -> None:
    """`check` prints each source on one line with every setting, the s3-poll bucket too."""
    result = cli("check", "-c", str(installed_config("example.yaml", tmp_path)))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("  source ")]
    assert lines[1] == (
        "  source uploads (sqs): https://sqs.us-east-1.amazonaws.com/123456789012/uploads-events; "
        "bucket: example-uploads, prefix: public/, wait_time: 20s, visibility_timeout: 60s, "
        "receivers: 2, compare: content"
    )
    assert lines[2] == (
        "  source static (s3-poll): s3://example-static/site/; interval: 300s, compare: content"
    )
    assert lines[0].startswith("  source docroot (filesystem): /")
    assert "; ignore: [" in lines[0]
    assert (
        "watcher: auto, poll_interval: 5s, watcher_process: true, rescan_interval: 600s"
        in (lines[0])
    )


def test_check_reports_every_problem_with_file_line_and_key(tmp_path: Path) -> None:
    """A broken config exits 2 with one located line per problem and no traceback."""
    bad = tmp_path / "config.yaml"
    bad.write_text(
        "distributions:\n"
        "  www:\n"
        "    id: E2EXAMPLE12345\n"
        "sources:\n"
        "  - name: docroot\n"
        "    type: filesystem\n"
        f"    root: {tmp_path / 'missing'}\n"
        "rules:\n"
        "  - match: '**'\n"
        "    distribution: nope\n"
        "    urls: ['/{nope}']\n"
        "debounse: {}\n"
    )
    result = cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:7: sources[0].root:") for line in lines), lines
    assert any(
        line.startswith(f"{bad}:10: rules[0].distribution: unknown distribution 'nope'")
        for line in lines
    ), lines
    assert any(line.startswith(f"{bad}:11: rules[0].urls[0]:") for line in lines), lines
    assert any(line.startswith(f"{bad}:12: debounse:") for line in lines), lines


def bomb_config(path: Path, root: Path) -> Path:
    """A valid-looking config with a "billion laughs" alias bomb (9**9 values) appended."""
    lines = [
        "distributions: {www: {id: E2EXAMPLE12345}}",
        f"sources: [{{name: docroot, type: filesystem, root: '{root}'}}]",
        'x0: &x0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]',
    ]
    for level in range(1, 9):
        lines.append(f"x{level}: &x{level} [{', '.join([f'*x{level - 1}'] * 9)}]")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_check_refuses_an_alias_bomb_with_one_line(tmp_path: Path) -> None:
    """A "billion laughs" config is exit 2 with one located line, no MemoryError, no
    traceback (it used to run for a minute and die)."""
    bomb = bomb_config(tmp_path / "bomb.yaml", tmp_path)
    result = cli("check", "-c", str(bomb))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{bomb}:11: invalid YAML: aliases expand to more than 100000 values "
        "(an alias bomb?); write the values out or reuse fewer of them"
    ]


def test_check_substitutes_the_environment_and_names_an_unset_variable(tmp_path: Path) -> None:
    """`${VAR}` comes from the environment `check` runs in; an unset one is exit 2 naming it."""
    config = tmp_path / "config.yaml"
    config.write_text(
        "distributions: {www: {id: '${WWW_ID}'}}\n"
        f"sources: [{{name: docroot, type: filesystem, root: '{tmp_path}'}}]\n"
    )
    env = {k: v for k, v in aws_test_env().items() if k != "WWW_ID"}
    result = cli("check", "-c", str(config), env={**env, "WWW_ID": "E7FROMENV"})
    assert result.returncode == 0, result.stderr
    assert "  distribution www: E7FROMENV" in result.stdout.splitlines()
    result = cli("check", "-c", str(config), env=env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:1: distributions.www.id: environment variable 'WWW_ID' is "
        "not set (set it, or give a default: ${WWW_ID:-value})"
    ]


def test_check_warns_of_overlapping_roots_and_suggests_a_key(tmp_path: Path) -> None:
    """`check` warns when one filesystem source watches inside another, and an unknown key
    comes with the nearest known one."""
    (tmp_path / "blog").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(
        "distributions: {www: {id: E2EXAMPLE12345}}\n"
        "sources:\n"
        "  - {name: docroot, type: filesystem, root: .}\n"
        "  - {name: blog, type: filesystem, root: blog}\n"
    )
    result = cli("check", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {config}:4: sources[1].root: is inside the root of sources[0] ('docroot'): "
        "changes under it are seen twice"
    ) in result.stderr.splitlines()
    config.write_text(config.read_text() + "aws: {regon: eu-west-1}\n")
    result = cli("check", "-c", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"{config}:5: aws.regon: unknown key 'regon' (expected one of: region, "
        "profile, endpoint_url, role_arn); did you mean 'region'?"
    ]


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    """A config path that does not exist: exit 2, one line naming it."""
    result = cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_path_from_the_environment(tmp_path: Path) -> None:
    """INVALIDATORD_CONFIG names the config when -c is not given."""
    env = aws_test_env()
    env["INVALIDATORD_CONFIG"] = str(installed_config("minimal.yaml", tmp_path))
    result = cli("check", env=env)
    assert result.returncode == 0, result.stderr


def test_map_prints_one_line_per_url_per_distribution(tmp_path: Path) -> None:
    """`map` shows what a path would invalidate, prefixed by the distribution name."""
    minimal = str(installed_config("minimal.yaml", tmp_path))
    result = cli("map", "-c", minimal, "docs/index.html", "a b.css")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "www /a%20b.css"
    assert all(line.startswith("www /") for line in lines)


def test_map_unknown_source_is_exit_2(tmp_path: Path) -> None:
    """Naming a source the config does not have is a usage error."""
    minimal = str(installed_config("minimal.yaml", tmp_path))
    result = cli("map", "-c", minimal, "--source", "nope", "a.html")
    assert result.returncode == 2
    assert "unknown source 'nope'" in result.stderr


def test_python_dash_m_is_the_same_command() -> None:
    """`python -m invalidatord --help` lists every command of the contract."""
    result = cli("--help")
    assert result.returncode == 0
    for command in ("run", "check", "map", "invalidate", "status", "demo"):
        assert command in result.stdout


def test_demo_submits_an_invalidation_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The README's first command: the daemon runs on the emulator, invalidates the page the
    demo edits, tracks it to Completed, and Ctrl-C (SIGINT) stops it with exit 0."""
    demo = DaemonProcess("demo", "--dir", str(tmp_path)).start()
    try:
        submitted = demo.wait_event("batch_submitted", timeout=60)
        assert set(submitted["sample"]) == {"/", "/index.html", "/css/site.css"}
        demo.wait_event("invalidation_completed", timeout=30)
        assert demo.stop(signal.SIGINT) == 0, demo.transcript()
        assert (tmp_path / "docroot" / "index.html").exists()
    finally:
        demo.kill()
