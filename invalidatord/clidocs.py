"""What is generated from the command-line parser, so it can never disagree with it: the shell
completion scripts (shtab) and the man page (argparse-manpage).

shtab is a dependency (`invalidatord completion` runs on any install); argparse-manpage is
the `manpage` extra: it ships no wheel, and the image installs wheels only. The wheel carries
the man page already built (docs/invalidatord.1, kept current by a test), so only
`invalidatord manpage` itself needs it."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from invalidatord import __version__
from invalidatord.errors import InvalidatordError

SHELLS = ("bash", "zsh")

#: set on an argparse action: what its value completes to (see `mark`)
_COMPLETES = "_invalidatord_completes"


class MissingExtra(InvalidatordError):
    """An optional package a command needs is not installed."""


def mark(action: argparse.Action, kind: str) -> argparse.Action:
    """Note that `action` takes a file ("file") or a directory ("directory"). The shtab
    values are attached only when a completion script is made: importing shtab costs about
    150 ms, which no other command should pay."""
    setattr(action, _COMPLETES, kind)
    return action


def parsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(subcommand name, its parser) for every subcommand, in the order of `--help`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def completion(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `shell` (one of SHELLS) for `parser`."""
    import shtab

    kinds = {"file": shtab.FILE, "directory": shtab.DIRECTORY}
    for each in (parser, *(p for _, p in parsers(parser))):
        for action in each._actions:
            kind = getattr(action, _COMPLETES, None)
            if kind is not None:
                action.complete = kinds[kind]  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


_EXTRA_SECTIONS = (
    (
        "exit status",
        ".TP\n.B 0\nsuccess; \\fBrun\\fR: a clean stop (SIGTERM, SIGINT)\n"
        ".TP\n.B 1\na runtime failure (no credentials, CloudFront refusing, a state_dir that "
        "cannot be written), said in one line\n"
        ".TP\n.B 2\na usage or config error, one line per problem (file:line: key: what)",
    ),
    (
        "environment",
        ".TP\n.B INVALIDATORD_CONFIG\nthe config file when \\fB\\-c\\fR is not given\n"
        ".TP\n.B AWS_*\nthe standard boto3 credential chain (or an instance, task or pod role)",
    ),
    (
        "files",
        ".TP\n.I /etc/invalidatord/config.yaml\nthe default config file\n"
        ".TP\n.I /var/lib/invalidatord\nthe default state_dir: the journal (SQLite)",
    ),
    ("see also", "The README of invalidatord: every config key, the probes and the metrics."),
)


def manpage(parser: argparse.ArgumentParser) -> str:
    """The man page (roff, section 1) of `parser`, every subcommand and option included.
    Its date is $SOURCE_DATE_EPOCH's when set (reproducible builds), else today."""
    try:
        from argparse_manpage.manpage import Manpage
    except ImportError:
        raise MissingExtra(
            "invalidatord manpage needs the argparse-manpage package: "
            "pip install 'invalidatord[manpage]' (an installed wheel already ships the page: "
            "man invalidatord)"
        ) from None
    page = Manpage(parser)
    summary = (parser.description or "").rstrip(".")
    page.description = summary[:1].lower() + summary[1:] or None
    page.source = f"invalidatord {__version__}"
    page.manual = "invalidatord manual"
    for heading, content in _EXTRA_SECTIONS:
        page.add_section(heading, "=", content)
    try:
        return str(page)
    finally:
        # add_section keeps its sections on the parser; a second page must not repeat them
        parser._manpage = []  # type: ignore[attr-defined]
