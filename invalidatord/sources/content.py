"""The content hash of `compare: content` and of release swaps: xxHash's XXH3, 128 bits.

Why XXH3-128 (the `xxhash` package): the hash only has to tell "these bytes changed" for files
the operator publishes, not resist an adversary who could just as well edit the file. Measured
on this project's bench machine (bench/cases.py `content_compare`): 12.6 GB/s on 64 MiB in
memory and 1.4 us for an 8 KB page, against 2.0 GB/s and 7.1 us for BLAKE3 (the `blake3`
package, one thread) and 0.9 GB/s for SHA-256; reading the file costs more than either. 128
bits keep an accidental collision out of reach for any tree (2^-64 at four billion files).
"""

from __future__ import annotations

import errno
import os
import stat as stat_module

import xxhash

from invalidatord.model import FileStat

#: Bytes read per read(2) while hashing.
_CHUNK = 1 << 20
#: Attempts to read a file that keeps changing while it is read, before taking the last one.
_ATTEMPTS = 3


class Hashed:
    """Running totals of what was hashed (for the bench and the logs)."""

    __slots__ = ("bytes", "files")

    def __init__(self) -> None:
        self.files = 0
        self.bytes = 0


def file_digest(
    full: str, totals: Hashed | None = None, dir_fd: int | None = None, *, follow: bool = True
) -> tuple[os.stat_result, bytes] | None:
    """(fstat of the file read, XXH3-128 of its bytes) of the regular file at `full` (a
    symlink is followed), or None when it is gone or not a regular file. The stat is taken
    from the open file, before and after reading: if they differ the file was written while
    it was read and it is read again, so the digest always belongs to the stat returned
    (a write after that brings a new event, and a new read). With `dir_fd`, `full` is
    relative to that open directory. Without `follow`, a symlink raises `IsSymlink` (one
    open instead of an lstat and an open for the files that are not links)."""
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO must not block the reader
    try:
        fd = os.open(full, flags if follow else flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if not follow and exc.errno == errno.ELOOP:
            raise IsSymlink(full) from None
        return None
    except ValueError:
        return None
    try:
        before = os.fstat(fd)
        if not stat_module.S_ISREG(before.st_mode):
            return None
        for _ in range(_ATTEMPTS):
            # One read of the size fstat gave (plus one byte, to see a file that grew): a
            # short read is the end. For a small page: 11.8 -> 6.6 us with the one open
            # (a 1 MiB read buffer was allocated, and a second read made, for every file).
            want = min(before.st_size + 1, _CHUNK)
            chunk = os.read(fd, want)
            read = len(chunk)
            if read < want:
                digest = xxhash.xxh3_128_digest(chunk)
            else:
                hasher = xxhash.xxh3_128(chunk)
                while chunk:
                    chunk = os.read(fd, _CHUNK)
                    hasher.update(chunk)
                    read += len(chunk)
                digest = hasher.digest()
            if totals is not None:
                totals.files += 1
                totals.bytes += read
            after = os.fstat(fd)
            if _same_version(before, after):
                return before, digest
            before = after
            os.lseek(fd, 0, os.SEEK_SET)
        return before, digest
    except OSError:
        return None
    finally:
        os.close(fd)


class IsSymlink(Exception):
    """`file_digest(..., follow=False)` met a symlink."""


def _same_version(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_size, a.st_mtime_ns, a.st_ctime_ns) == (b.st_size, b.st_mtime_ns, b.st_ctime_ns)


def with_digest(st: FileStat, digest: bytes | None) -> FileStat:
    return FileStat(st.size, st.mtime_ns, st.inode, st.ctime_ns, digest)
