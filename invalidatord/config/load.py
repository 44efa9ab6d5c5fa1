"""Reading a config file: YAML (with the line of every key), then the schema, then every
problem as one `FILE:LINE: KEY.PATH: message` line of a `ConfigError`."""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import ValidationError

from invalidatord.config.fields import Loc, describe_value
from invalidatord.config.linemap import join, line_of, parse_yaml, yaml_problem
from invalidatord.config.messages import translate, unknown_key
from invalidatord.config.schema import Config
from invalidatord.errors import ConfigError

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "default_config_path",
    "load_config",
    "load_config_text",
]

DEFAULT_CONFIG_PATH = "/etc/invalidatord/config.yaml"
#: Environment variable that overrides DEFAULT_CONFIG_PATH (the `-c` option overrides both).
CONFIG_ENV = "INVALIDATORD_CONFIG"


def default_config_path() -> str:
    """`$INVALIDATORD_CONFIG` if set and not empty, else DEFAULT_CONFIG_PATH."""
    return os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read, parse and validate the config file at `path`.

    Raises ConfigError whose `problems` are one line each, `FILE:LINE: KEY.PATH: message`.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [
                f"{file}: cannot read the config file: not UTF-8 text "
                f"({exc.reason} at byte {exc.start})"
            ]
        ) from None
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read the config file: {exc.strerror or exc}"]) from None
    absolute = file.absolute()
    return _load(text, str(file), absolute.parent, absolute)


def load_config_text(text: str, filename: str = "<config>", base_dir: Path | None = None) -> Config:
    """Parse and validate config YAML given as text. `filename` is used in messages;
    relative paths are taken from `base_dir` (default: the current directory)."""
    return _load(text, filename, base_dir, None)


def _load(text: str, filename: str, base_dir: Path | None, source_path: Path | None) -> Config:
    def fail(problems: list[tuple[int, str]]) -> ConfigError:
        ordered = sorted(dict.fromkeys(problems), key=lambda problem: problem[0])
        return ConfigError([f"{filename}:{line}: {message}" for line, message in ordered])

    try:
        data, lines, problems, unresolved = parse_yaml(text)
    except yaml.YAMLError as exc:
        raise fail([yaml_problem(exc, text)]) from None
    if data is None:
        raise fail([(1, "the file is empty; a config needs at least distributions: and sources:")])
    if not isinstance(data, dict):
        message = (
            "the top level must be a mapping of keys such as distributions: and sources:, "
            f"got {describe_value(data)}"
        )
        raise fail([(lines.get((), 1), message)])
    if "source_path" in data:  # set from the file's location, never read from the file
        path: Loc = ("source_path",)
        problems.append(
            (lines[path], join(path, unknown_key("source_path", Config, suggest=False)))
        )
        data = {k: v for k, v in data.items() if k != "source_path"}

    try:
        cfg = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            path, message = translate(error, data)
            if path in unresolved:  # already reported: a variable that is not set
                continue
            if error["type"] == "invalid_key":  # the line of the key itself, below `path`
                line = line_of((*path, error["loc"][-1]), lines)
            else:
                line = line_of(path, lines)
            problems.append((line, join(path, message)))
        raise fail(problems) from None
    if problems:
        raise fail(problems)
    if source_path is not None:
        cfg = cfg.model_copy(update={"source_path": source_path})
    cfg._lines = lines
    cfg._filename = filename
    return cfg
