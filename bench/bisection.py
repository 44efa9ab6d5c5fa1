"""`python -m bench.bisection`: CreateInvalidation requests per batch while bisecting an
InvalidArgument, for batches of N paths, now and without the request-refused rule (the old
full bisection: every path refused costs 2N-1 requests). Pure, in-process, no CloudFront."""

from __future__ import annotations

from dataclasses import dataclass
from unittest import mock

from invalidatord import bisection
from invalidatord.errors import InvalidPaths


@dataclass(frozen=True)
class _Part:
    paths: tuple[str, ...]


def requests(n: int, bad: set[int] | None) -> int:
    """Requests to send a batch of `n` paths of which `bad` are refused (None: every request)."""

    def send(part: _Part) -> bool:
        if bad is None or any(int(p) in bad for p in part.paths):
            raise InvalidPaths("www", "InvalidArgument", "refused", retryable=False)
        return True

    def split(part: _Part, exc: InvalidPaths) -> tuple[_Part, _Part]:
        first, second = bisection.halves(part.paths)
        return _Part(first), _Part(second)

    part = _Part(tuple(str(i) for i in range(n)))
    return bisection.send_bisecting(part, send=send, split=split).requests


def main() -> int:
    cases = [("every request refused", None), ("one bad path", {0}), ("three bad paths", {0, 1, 2})]
    print(f"{'case':24} {'N':>5} {'before':>7} {'now':>5}")
    for label, bad in cases:
        for n in (4, 8, 64, 500, 3000):
            now = requests(n, bad)
            with mock.patch.object(bisection, "REQUEST_REFUSED_PATHS", 10**9):
                before = requests(n, bad)
            print(f"{label:24} {n:>5} {before:>7} {now:>5}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
