"""YAML -> validated, frozen config. Every problem names the file, the line and the key.

    config.yaml:14: rules[1].distribution: unknown distribution 'nope' (known: www)

The package, by role:

- `schema`: the pydantic models, one per section (start here to add a key);
- `fields`: the value types (durations, listen addresses) and field checks the models use;
- `linemap`: YAML text -> data and the line of every key path;
- `messages`: pydantic errors -> messages for people, at a key path;
- `load`: `load_config`, which puts those together and reports every problem at once;
- `warnings`: `config_warnings`, likely mistakes in a valid config.
"""

from __future__ import annotations

from invalidatord.config.fields import Duration, parse_duration, parse_listen
from invalidatord.config.load import (
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    default_config_path,
    load_config,
    load_config_text,
)
from invalidatord.config.schema import (
    AwsConfig,
    Config,
    DebounceConfig,
    DistributionConfig,
    FilesystemSourceConfig,
    FleetConfig,
    InvalidationConfig,
    LogConfig,
    MetricsConfig,
    RuleConfig,
    S3PollSourceConfig,
    SourceConfig,
    SqsSourceConfig,
)
from invalidatord.config.warnings import config_warnings

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_PATH",
    "AwsConfig",
    "Config",
    "DebounceConfig",
    "DistributionConfig",
    "Duration",
    "FilesystemSourceConfig",
    "FleetConfig",
    "InvalidationConfig",
    "LogConfig",
    "MetricsConfig",
    "RuleConfig",
    "S3PollSourceConfig",
    "SourceConfig",
    "SqsSourceConfig",
    "config_warnings",
    "default_config_path",
    "load_config",
    "load_config_text",
    "parse_duration",
    "parse_listen",
]
