"""Finding the paths CloudFront refuses: one bisecting routine for the daemon and Lambda mode.

CloudFront answers InvalidArgument for a whole CreateInvalidation when one of its paths is
unacceptable, without saying which. Sending each half of the batch on its own, and each half of a
refused half, finds every refused path in O(k log N) requests for k bad paths of N, while every
accepted part is invalidated as soon as it is found.

Pure: what a part is, how it is sent and how it is split belong to the caller (the daemon's parts
are journal batches, so every split is durable before its halves are sent; Lambda mode's are
plain path tuples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from invalidatord.errors import InvalidPaths

__all__ = ["Bisection", "Part", "halves", "send_bisecting"]


class Part(Protocol):
    """Something sent as one CreateInvalidation."""

    @property
    def paths(self) -> tuple[str, ...]: ...


P = TypeVar("P", bound=Part)


@dataclass
class Bisection(Generic[P]):
    """What became of one part: the one-path parts CloudFront refused (with its answer),
    how many requests it took, and whether `send` stopped it before the end (the parts not yet
    sent are then the caller's to keep)."""

    rejected: list[tuple[P, InvalidPaths]] = field(default_factory=list)
    requests: int = 0
    stopped: bool = False


def halves(paths: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The two halves a refused batch is split into (the first is the smaller one)."""
    half = len(paths) // 2
    return tuple(paths[:half]), tuple(paths[half:])


def send_bisecting(
    part: P,
    *,
    send: Callable[[P], bool],
    split: Callable[[P, InvalidPaths], tuple[P, P]],
) -> Bisection[P]:
    """Send `part`; while CloudFront refuses a part of more than one path with InvalidArgument,
    `split` it (into its `halves`) and send each half, first half first.

    `send` raises `InvalidPaths` for a refusal and returns False to stop (a fault, a backoff);
    any other exception propagates. A refused one-path part is not sent again: it is returned
    in `rejected` for the caller to set aside.
    """
    result: Bisection[P] = Bisection()
    todo = [part]
    while todo:
        current = todo.pop()
        result.requests += 1
        try:
            if not send(current):
                result.stopped = True
                return result
        except InvalidPaths as exc:
            if len(current.paths) <= 1:
                result.rejected.append((current, exc))
                continue
            first, second = split(current, exc)
            todo += [second, first]
    return result
