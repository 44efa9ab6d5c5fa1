"""An in-memory source for pipeline tests: changes are emitted by hand, the tree is a dict.

Satisfies `contracts.Source` and `contracts.TreeScanner`. Delivery happens on the caller's
thread (the one calling `emit`), synchronously, so a test knows a change was delivered when
`emit` returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

from invalidatord.catchup import path_key
from invalidatord.contracts import ChangeSink
from invalidatord.errors import SourceError
from invalidatord.model import Change, ChangeKind, FileStat


class MemorySource:
    """A `Source` and `TreeScanner` whose tree is `files` (path -> stat) and whose changes are
    whatever the test `emit`s. `acknowledged` records the receipts handed back, in order."""

    def __init__(
        self,
        name: str,
        sink: ChangeSink,
        *,
        compare: Literal["mtime", "content"] = "mtime",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        #: path -> stat; a stat's `digest` stands for the file's bytes (`digest` returns it)
        self.files: dict[str, FileStat] = {}
        self.compare = compare
        #: the tree before the last swap, for `previous_digest`
        self.previous: dict[str, FileStat] = {}
        #: how many times `digest` and `previous_digest` "read" a file
        self.reads = 0
        self.acknowledged: list[str] = []
        #: no watch to lose events: a first start's baseline reports nothing
        self.watching_since_ns = 0
        self._sink = sink
        self._clock = clock
        self._lock = threading.Lock()
        self._running = False

    def start(self) -> None:
        self._running = True

    def stop(self) -> None:
        self._running = False

    @property
    def healthy(self) -> bool:
        return self._running

    def problem(self) -> str | None:
        return None if self._running else "not watching (not started or stopped)"

    def acknowledge(self, receipts: Sequence[str]) -> None:
        with self._lock:
            self.acknowledged.extend(receipts)

    def emit(
        self,
        path: str,
        kind: ChangeKind = ChangeKind.MODIFIED,
        *,
        receipt: str | None = None,
        seen: float | None = None,
    ) -> Change:
        """Deliver one change to the sink now and return it. Raises `SourceError` when the
        source is not started (a real source delivers nothing then either)."""
        if not self._running:
            raise SourceError(self.name, f"emit({path!r}) while the source is not started")
        change = Change(
            self.name, path, kind, self._clock() if seen is None else seen, receipt=receipt
        )
        self._sink(change)
        return change

    def set_file(self, path: str, stat: FileStat | None) -> None:
        """Put `path` in the tree with `stat`, or take it out (`None`). Emits nothing: use it
        to change the tree "while the daemon was stopped", then `emit` if it should be seen."""
        with self._lock:
            if stat is None:
                self.files.pop(path, None)
            else:
                self.files[path] = stat

    def scan(self, prefix: str = "") -> Iterator[tuple[str, FileStat]]:
        """Files under `prefix` ("" = all), from a snapshot taken at the call, in the order the
        contract asks for: by the UTF-8 (surrogateescape) bytes of the path."""
        top = prefix.strip("/")
        under = top + "/" if top else ""
        with self._lock:
            snapshot = [item for item in self.files.items() if item[0].startswith(under)]
        snapshot.sort(key=lambda item: path_key(item[0]))
        return iter(snapshot)

    def stat(self, path: str) -> FileStat | None:
        with self._lock:
            return self.files.get(path)

    def digest(self, path: str) -> FileStat | None:
        with self._lock:
            st = self.files.get(path)
            if st is not None:
                self.reads += 1
            return st

    def previous_digest(self, path: str, indexed: FileStat) -> bytes | None:
        with self._lock:
            st = self.previous.get(path)
            if st is None or st != indexed:
                return None
            self.reads += 1
            return st.digest
