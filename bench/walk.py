"""A plain os.scandir walk with an lstat per file: the least a catch-up scan must do.
Prints {"files": N, "seconds": S} (the walk alone, without interpreter start-up)."""

from __future__ import annotations

import json
import os
import sys
import time


def walk(root: str) -> int:
    files = 0
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat(follow_symlinks=False)
                    files += 1
    return files


def main() -> int:
    started = time.monotonic()
    files = walk(sys.argv[1])
    print(json.dumps({"files": files, "seconds": time.monotonic() - started}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
