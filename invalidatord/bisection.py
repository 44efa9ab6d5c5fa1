"""Finding the paths CloudFront refuses: one bisecting routine for the daemon and Lambda mode.

CloudFront answers InvalidArgument for a whole CreateInvalidation when one of its paths is
unacceptable, without saying which. Sending each half of the batch on its own, and each half of a
refused half, finds every refused path in O(k log N) requests for k bad paths of N, while every
accepted part is invalidated as soon as it is found. A CloudFront that refuses every request
with InvalidArgument (whatever its paths) is told apart from a batch of bad paths, so the work is
kept and retried later instead of being set aside path by path.

Pure: what a part is, how it is sent and how it is split belong to the caller (the daemon's parts
are journal batches, so every split is durable before its halves are sent; Lambda mode's are
plain path tuples).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from invalidatord.errors import InvalidPaths

__all__ = [
    "REQUEST_REFUSED_PARTS",
    "REQUEST_REFUSED_PATHS",
    "Bisection",
    "Part",
    "halves",
    "send_bisecting",
]


class Part(Protocol):
    """Something sent as one CreateInvalidation."""

    @property
    def paths(self) -> tuple[str, ...]: ...


P = TypeVar("P", bound=Part)


#: The request, not its paths: when no part has been accepted and every part of one level of
#: the bisection, at least this many, is refused, the batch would have to hold that many bad
#: paths spread evenly through it and not one good one; CloudFront refusing the request itself
#: (whatever its paths) is the likelier reading. Bisecting on would take 2N-1 requests.
REQUEST_REFUSED_PARTS = 8
#: The smallest batch whose refusal of every single path reads as the request's fault. Below it
#: (one or a few paths, the common case of a bad file name) each refused path is set aside.
REQUEST_REFUSED_PATHS = 4


@dataclass
class Bisection(Generic[P]):
    """What became of one part: the one-path parts CloudFront refused (with its answer),
    how many requests it took, and whether `send` stopped it before the end (the parts not yet
    sent are then the caller's to keep). `refused_whole` is CloudFront's answer when it
    refused the request rather than its paths: then nothing is in `rejected` and every part
    not sent is the caller's to keep and send again later."""

    rejected: list[tuple[P, InvalidPaths]] = field(default_factory=list)
    requests: int = 0
    stopped: bool = False
    refused_whole: InvalidPaths | None = None


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
    """Send `part`; while CloudFront refuses parts of more than one path with InvalidArgument,
    `split` them (into their `halves`) and send each half, one level of halves at a time.

    `send` raises `InvalidPaths` for a refusal and returns False to stop (a fault, a backoff);
    any other exception propagates. A refused one-path part is not sent again: it is returned
    in `rejected` for the caller to set aside; unless nothing was accepted and the refusals say
    it is the request (`REQUEST_REFUSED_PARTS`, `REQUEST_REFUSED_PATHS`): then `refused_whole`.
    The same parts are sent as by a depth-first bisection, so k bad paths of N still cost
    O(k log N) requests; all of N refused costs at most 15 instead of 2N-1.
    """
    result: Bisection[P] = Bisection()
    accepted = False
    level = [part]
    while level:
        refused: list[tuple[P, InvalidPaths]] = []
        for current in level:
            result.requests += 1
            try:
                if not send(current):
                    result.stopped = True
                    return result
            except InvalidPaths as refusal:
                refused.append((current, refusal))
            else:
                accepted = True
        deeper: list[P] = []
        for current, exc in refused:
            if len(current.paths) <= 1:
                result.rejected.append((current, exc))
            else:
                deeper += split(current, exc)
        request_refused = len(level) >= REQUEST_REFUSED_PARTS or not deeper
        if request_refused and not accepted and len(part.paths) >= REQUEST_REFUSED_PATHS:
            result.rejected = []
            result.refused_whole = refused[-1][1]
            return result
        level = deeper
    return result
