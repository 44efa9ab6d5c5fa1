"""The kill loop: change files, SIGKILL the daemon (and its watcher) at a random moment,
restart it, again and again; then count the changed paths CloudFront was asked to invalidate.

    python -m bench.killloop [--kills 30] [--files 20] [--seed 1]

Prints one line per round and the figure the "never lost" promise rests on: changed paths,
invalidated paths (named or under a wildcard), and the ones missing (must be 0). A kill lands
anywhere: while debouncing, while accepting, while submitting, during the start-up catch-up.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import tempfile
import time
from pathlib import Path

from bench.procs import Daemon, Emulator, covered, reap_all, signal_family, wait_until, write_config


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.killloop")
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--files", type=int, default=20, help="files changed per round")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    emulator = Emulator()
    work = Path(tempfile.mkdtemp(prefix="killloop-"))
    root = work / "www"
    root.mkdir()
    for i in range(200):
        (root / f"p{i:03}.html").write_text("v0")
    dist = emulator.new_distribution()
    config = write_config(
        work, root=root, endpoint=emulator.endpoint, distribution_id=dist, quiet=0.3
    )
    changed: set[str] = set()
    daemon = Daemon(config)
    try:
        daemon.wait_ready()
        for round_ in range(1, args.kills + 1):
            names = rng.sample(range(200), args.files)
            for i in names:
                (root / f"p{i:03}.html").write_text(f"v{round_}")
                changed.add(f"/p{i:03}.html")
            time.sleep(rng.uniform(0.0, 1.2))  # the kill lands at a random moment
            signal_family(daemon.pid, signal.SIGKILL)
            daemon.proc.wait(30)
            daemon = Daemon(config)
            daemon.wait_ready()
            print(f"round {round_:3}: {len(changed)} paths changed so far", flush=True)

        def done() -> bool:
            sent = [p for r in emulator.creates(dist) for p in r["paths"]]
            return covered(sent, changed) == changed

        # a timeout is not an error here: the figure below says what is missing
        with contextlib.suppress(Exception):
            wait_until(done, 120, "every changed path at CloudFront", poll=0.2)
        sent = [p for r in emulator.creates(dist) for p in r["paths"]]
        hit = covered(sent, changed)
        print(
            f"kills: {args.kills}; changed paths: {len(changed)}; invalidated: {len(hit)}; "
            f"missing: {len(changed - hit)}; "
            f"CreateInvalidation calls: {len(emulator.creates(dist))}"
        )
        return 0 if hit == changed else 1
    finally:
        daemon.stop()
        emulator.close()
        reap_all()


if __name__ == "__main__":
    raise SystemExit(main())
