"""Every source type, one entry each: how it is built from its config and what the daemon does
with it. The composition root builds sources only through `build`; nothing else names a type.

Adding a source type: a config model in the config schema (with `type: Literal["NAME"]` and a
`describe()` for `check`), an implementation of `contracts.Source` in this package (a
`TreeScanner` too if it has a catch-up index), and one `SourceType` entry in `SOURCE_TYPES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from invalidatord.config import (
    FilesystemSourceConfig,
    S3PollSourceConfig,
    SourceConfig,
    SqsSourceConfig,
)
from invalidatord.contracts import BatchSink, ChangeSink, Source
from invalidatord.errors import InvalidatordError

if TYPE_CHECKING:  # the CLI imports this module to prespawn, before anything heavy
    from invalidatord.journal import Journal
    from invalidatord.metrics import Metrics

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What a source may be given by the composition root."""

    sink: ChangeSink
    journal: Journal
    metrics: Metrics
    #: a boto3 client of a service ("sqs", "s3") with the daemon's session and endpoint
    client: Callable[[str], Any]
    #: where a source may deliver a burst of changes as one value
    sink_batch: BatchSink | None = None


@dataclass(frozen=True, slots=True)
class SourceType(Generic[C]):
    """One kind of source."""

    build: Callable[[C, BuildContext], Source]
    #: the built source is a `contracts.TreeScanner` with a catch-up index in the journal
    #: (first-start baseline, start-up catch-up, rescans after an overflow)
    tree: bool = False
    #: seconds between safety-net rescans of the whole tree, or None
    rescan_interval: Callable[[C], float | None] = lambda _cfg: None
    #: started as soon as the config is read, before the daemon imports the rest
    prespawn: Callable[[C], None] | None = None


def _filesystem(scfg: FilesystemSourceConfig, ctx: BuildContext) -> Source:
    from invalidatord.sources.filesystem import FilesystemSource

    return FilesystemSource(
        scfg.name,
        Path(scfg.root),
        ctx.sink,
        ignore=scfg.ignore,
        watcher=scfg.watcher,
        poll_interval=scfg.poll_interval,
        separate_process=scfg.watcher_process,
        compare=scfg.compare,
        metrics=ctx.metrics,
        hold_while=scfg.hold_while,
        sink_batch=ctx.sink_batch,
    )


def _prespawn_filesystem(scfg: FilesystemSourceConfig) -> None:
    if not scfg.watcher_process:
        return
    from invalidatord.sources.ignore import with_fences
    from invalidatord.sources.watcher import WatchSettings, prespawn

    root = os.path.realpath(scfg.root)
    # the same ignore list as the source's own (equal settings: the child is adopted)
    ignore = with_fences(scfg.ignore, scfg.hold_while)
    prespawn(WatchSettings(scfg.name, root, ignore, scfg.watcher, scfg.poll_interval))


def _sqs(scfg: SqsSourceConfig, ctx: BuildContext) -> Source:
    from invalidatord.sources.sqs import SqsSource

    return SqsSource(
        scfg.name,
        ctx.sink,
        ctx.client("sqs"),
        queue_url=scfg.queue_url,
        bucket=scfg.bucket,
        prefix=scfg.prefix,
        wait_time=scfg.wait_time,
        visibility_timeout=scfg.visibility_timeout,
        receivers=scfg.receivers,
        compare=scfg.compare,
        index=ctx.journal,  # the ETag of each key, for compare: content
    )


def _s3_poll(scfg: S3PollSourceConfig, ctx: BuildContext) -> Source:
    from invalidatord.sources.s3poll import S3PollSource

    return S3PollSource(
        scfg.name,
        ctx.sink,
        ctx.client("s3"),
        ctx.journal,  # its index of ETags lives in the journal
        bucket=scfg.bucket,
        prefix=scfg.prefix,
        interval=scfg.interval,
        compare=scfg.compare,
    )


SOURCE_TYPES: dict[str, SourceType[Any]] = {
    "filesystem": SourceType(
        build=_filesystem,
        tree=True,
        rescan_interval=lambda scfg: scfg.rescan_interval,
        prespawn=_prespawn_filesystem,
    ),
    "sqs": SourceType(build=_sqs),
    "s3-poll": SourceType(build=_s3_poll),
}


def source_type(scfg: SourceConfig) -> SourceType[Any]:
    try:
        return SOURCE_TYPES[scfg.type]
    except KeyError:  # a type the config accepts that nothing builds would watch nothing
        raise InvalidatordError(
            f"source {scfg.name!r}: unsupported type {scfg.type!r} "
            f"(known: {', '.join(SOURCE_TYPES)})"
        ) from None


def build(scfg: SourceConfig, ctx: BuildContext) -> Source:
    return source_type(scfg).build(scfg, ctx)


def tree_sources(sources: Sequence[SourceConfig]) -> list[str]:
    """Names of the sources with a catch-up index."""
    return [s.name for s in sources if source_type(s).tree]


def prespawn(sources: Sequence[SourceConfig]) -> None:
    """Start what each source can start before the daemon is built (the filesystem source's
    watcher process adds its watches on the other core while boto3 is imported)."""
    for scfg in sources:
        hook = source_type(scfg).prespawn
        if hook is not None:
            hook(scfg)
