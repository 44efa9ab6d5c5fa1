"""Document trees for the benchmark: N small files spread over D directories (two levels)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from pathlib import Path

_FLAGS_CREATE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_FLAGS_APPEND = os.O_WRONLY | os.O_APPEND


def layout(files: int, dirs: int) -> list[str]:
    """`files` relative file paths spread round-robin over `dirs` leaf directories laid out as
    TOP/LEAF (about sqrt(dirs) top-level directories)."""
    top = max(1, math.isqrt(dirs))
    leaves = [f"t{i % top:03d}/d{i:05d}" for i in range(dirs)]
    return [f"{leaves[i % dirs]}/f{i:06d}.html" for i in range(files)]


def make_dirs(root: Path, rels: list[str]) -> None:
    for d in sorted({rel.rsplit("/", 1)[0] for rel in rels}):
        (root / d).mkdir(parents=True, exist_ok=True)


def write_files(root: Path, rels: list[str], data: bytes) -> None:
    """Create (or truncate and rewrite) each file: one open, one write, one close."""
    base = str(root) + "/"
    for rel in rels:
        fd = os.open(base + rel, _FLAGS_CREATE, 0o644)
        os.write(fd, data)
        os.close(fd)


def append_files(root: Path, rels: list[str], data: bytes) -> None:
    base = str(root) + "/"
    for rel in rels:
        fd = os.open(base + rel, _FLAGS_APPEND)
        os.write(fd, data)
        os.close(fd)


def delete_files(root: Path, rels: list[str]) -> None:
    base = str(root) + "/"
    for rel in rels:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(base + rel)


def page(n: int) -> bytes:
    return f"<!doctype html><title>page {n}</title><p>{'x' * 64}</p>\n".encode()


def ensure_tree(root: Path, rels: list[str]) -> None:
    """`rels` exist under `root` (made once; a rerun with the same layout reuses the tree, and
    its files' contents may differ from the first ones)."""
    marker = root.parent / f".{root.name}.layout"
    layout_id = f"{len(rels)} {rels[0]} {rels[-1]}\n"
    if root.exists() and marker.exists() and marker.read_text() == layout_id:
        return
    marker.unlink(missing_ok=True)
    if root.exists():
        shutil.rmtree(root)
    make_dirs(root, rels)
    write_files(root, rels, page(0))
    marker.write_text(layout_id)


def drop_caches() -> bool:
    """Drop the page, dentry and inode caches (root only); False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w", encoding="ascii") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def prewarm(root: Path) -> None:
    """Walk and stat everything once so the next measurement starts with warm caches."""
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as listing:
            for entry in listing:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    entry.stat(follow_symlinks=False)
