"""The shell completion scripts and the man page, generated from the parser: run through the real
command line, checked by bash, zsh and groff where they are installed, and compared with the
parser's every subcommand and option."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from invalidatord import clidocs
from invalidatord.cli import _parser

REPO = Path(__file__).resolve().parents[1]
SHIPPED_PAGE = REPO / "docs" / "invalidatord.1"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invalidatord", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def _commands(*, with_help: bool = True) -> dict[str, list[str]]:
    """Every subcommand of the parser -> its option strings (as `--help` lists them; without
    -h/--help itself when not `with_help`: a man page has no use for it)."""
    return {
        name: [
            s
            for action in sub._actions
            if with_help or not isinstance(action, argparse._HelpAction)
            for s in action.option_strings
        ]
        for name, sub in clidocs.parsers(_parser())
    }


def _subparsers_action(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action


def test_the_parser_lists_the_commands_this_file_checks() -> None:
    """The walk over the parser finds every subcommand (the lists below are not empty by
    accident), the new two included."""
    names = list(_commands())
    assert names == list(_subparsers_action(_parser()).choices)
    assert {"run", "check", "map", "invalidate", "completion", "manpage"} <= set(names)


# --- bash -----------------------------------------------------------------------------------


def _bash_complete(script: Path, words: list[str], cwd: Path) -> list[str]:
    """What bash offers for the last of `words`, through the script's completion function."""
    shell = f"""
source {script}
COMP_WORDS=({" ".join(f"'{w}'" for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE="${{COMP_WORDS[*]}}"
COMP_POINT=${{#COMP_LINE}}
COMPREPLY=()
_shtab_invalidatord invalidatord "${{COMP_WORDS[-1]}}" "${{COMP_WORDS[-2]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", shell],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=30,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line]


def test_bash_completion_is_valid_bash_that_completes_every_command_and_option(
    tmp_path: Path,
) -> None:
    """`completion bash` passes `bash -n`; sourced, it offers exactly the parser's subcommands,
    each subcommand's long options after `--`, the shells after `completion`, and file names
    after `-c`."""
    result = _cli("completion", "bash")
    assert result.returncode == 0, result.stderr
    script = tmp_path / "invalidatord.bash"
    script.write_text(result.stdout)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    commands = _commands()
    assert _bash_complete(script, ["invalidatord", ""], tmp_path) == list(commands)
    for name, options in commands.items():
        offered = _bash_complete(script, ["invalidatord", name, "--"], tmp_path)
        assert set(offered) == {o for o in options if o.startswith("--")}, name
    assert _bash_complete(script, ["invalidatord", "completion", ""], tmp_path) == ["bash", "zsh"]
    (tmp_path / "conf.yaml").write_text("")
    assert _bash_complete(script, ["invalidatord", "check", "-c", "co"], tmp_path) == ["conf.yaml"]


def test_zsh_completion_names_every_command_and_option() -> None:
    """`completion zsh` is a #compdef file that names every subcommand and option of the
    parser, and passes `zsh -n` where zsh is installed."""
    result = _cli("completion", "zsh")
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert script.startswith("#compdef invalidatord\n")
    for name, options in _commands().items():
        assert re.search(rf"\b{re.escape(name)}\b", script), name
        for option in options:
            assert option in script, (name, option)
    zsh = shutil.which("zsh")
    if zsh is not None:
        subprocess.run([zsh, "-n"], input=script, text=True, check=True, timeout=30)


def test_an_unknown_shell_is_a_usage_error() -> None:
    """`completion fish` is refused by the parser: exit 2 naming the shells it knows."""
    result = _cli("completion", "fish")
    assert result.returncode == 2
    assert "invalid choice: 'fish'" in result.stderr
    assert re.search(r"choose from '?bash'?, '?zsh'?\)", result.stderr), result.stderr


# --- man page -------------------------------------------------------------------------------


def _render(roff: str) -> str:
    """The page as a terminal shows it: groff (its warnings an error), else man -l, else the
    roff source with its escapes undone (every check below still applies)."""
    groff = shutil.which("groff")
    if groff is not None:
        out = subprocess.run(
            [groff, "-man", "-Tutf8", "-ww", "-rLL=300n", "-P-cbou"],
            input=roff,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert out.stderr == "", out.stderr  # no warning of any kind
        return out.stdout
    man = shutil.which("man")
    if man is not None:
        env = {**os.environ, "MANWIDTH": "300", "MANPAGER": "cat", "PAGER": "cat"}
        out = subprocess.run(
            [man, "-l", "-"], input=roff, capture_output=True, text=True, env=env, check=True
        )
        return re.sub(r".\x08", "", out.stdout)
    return re.sub(r"\\f[BIRP]|\\/|\\,", "", roff).replace("\\-", "-")


def test_man_page_renders_and_lists_every_command_and_option() -> None:
    """`invalidatord manpage` is a section-1 page with NAME, SYNOPSIS and EXIT STATUS that
    groff renders without a warning, and names every subcommand and every option (but each
    subcommand's -h/--help)."""
    result = _cli("manpage")
    assert result.returncode == 0, result.stderr
    roff = result.stdout
    assert roff.startswith('.TH INVALIDATORD "1" ')
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "EXIT STATUS", "ENVIRONMENT", "FILES"):
        assert re.search(rf"^\.SH {section}$", roff, re.MULTILINE), section
    page = _render(roff)
    assert "invalidatord - keeps Amazon CloudFront caches fresh" in " ".join(page.split())
    for name, options in _commands(with_help=False).items():
        assert f"invalidatord {name}" in page, name
        assert f"COMMAND 'invalidatord {name}'" in page, name
        for option in options:
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", page), (name, option)


def test_the_shipped_man_page_is_the_parsers(tmp_path: Path) -> None:
    """docs/invalidatord.1, which the wheel and sdist carry, is what `invalidatord manpage`
    prints today but for its date: regenerate it with
    `python -m invalidatord manpage > docs/invalidatord.1` when the parser changes."""
    result = _cli("manpage")
    assert result.returncode == 0, result.stderr

    def undated(roff: str) -> str:
        return re.sub(r'^(\.TH \S+ "1") "[^"]*"', r"\1", roff, count=1, flags=re.MULTILINE)

    assert undated(SHIPPED_PAGE.read_text()) == undated(result.stdout)


def test_the_date_follows_source_date_epoch() -> None:
    """A reproducible build sets SOURCE_DATE_EPOCH: the page's date is that day."""
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}  # 2023-11-14
    result = _cli("manpage", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].split('"')[3] == "2023\\-11\\-14"


def test_manpage_without_the_extra_says_how_to_install_it(tmp_path: Path) -> None:
    """Without argparse-manpage (the `manpage` extra), `invalidatord manpage` exits 1 with one
    line saying what to install, and no traceback; the other commands do not need it."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "argparse_manpage.py").write_text("raise ImportError('not installed here')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(REPO)])}
    result = _cli("manpage", env=env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "invalidatord: invalidatord manpage needs the argparse-manpage package: pip install "
        "'invalidatord[manpage]' (an installed wheel already ships the page: man invalidatord)"
    ]
    assert _cli("completion", "bash", env=env).returncode == 0


@pytest.mark.parametrize("command", ["completion", "manpage"])
def test_new_commands_have_a_description_and_an_example(command: str) -> None:
    """Like every subcommand, `completion` and `manpage` say what they do and show one use."""
    result = _cli(command, "--help")
    assert result.returncode == 0
    assert "example:\n  invalidatord " + command in result.stdout


def test_the_packages_carry_the_page_and_the_readme_says_where_things_go() -> None:
    """pyproject installs docs/invalidatord.1 as share/man/man1 (the image's build context
    lets it in), shtab is a dependency and argparse-manpage the `manpage` extra, and the
    README shows the bash-completion directory, the zsh file name and `man -l`."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    data_files = project["tool"]["setuptools"]["data-files"]
    assert data_files["share/man/man1"] == ["docs/invalidatord.1"]
    assert any(d.startswith("shtab") for d in project["project"]["dependencies"])
    extras = project["project"]["optional-dependencies"]
    assert [d.split(">=")[0] for d in extras["manpage"]] == ["argparse-manpage"]
    assert "!docs/invalidatord.1" in (REPO / ".dockerignore").read_text().splitlines()
    readme = (REPO / "README.md").read_text()
    assert "invalidatord completion bash | sudo tee /usr/share/bash-completion/completions/" in (
        readme
    )
    assert "site-functions/_invalidatord" in readme
    assert "man -l /opt/invalidatord/share/man/man1/invalidatord.1" in readme
