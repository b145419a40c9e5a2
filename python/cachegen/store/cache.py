"""A size-bounded, least-recently-used local file copy in front of a remote store.

Meant for content-addressed objects (what contexts write): a key's bytes never change in a way
that matters, so a local copy is never stale. Several processes and threads may share one
directory. They keep one byte count, in the directory, changed only under a file lock; the
recency order is the copies' modification times, which hits refresh. A copy that another
process evicted, or that vanishes mid-read, is simply a miss.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .base import Buffer, ObjectInfo, Store
from .errors import StoreUnavailable
from .file import write_atomic

_DIGEST = 16  # bytes of blake2b in front of each local copy, checked on every hit
#: Eviction frees down to this fraction of the limit, so that its directory scan is paid once
#: per sixteenth of the cache written, not on every put.
_LOW_WATER = 15 / 16
_LOCK, _COUNT = ".lock", ".used"  # hidden names: never a key (see base.check_key)


def _digest(data: Buffer) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST).digest()


def _size(path: Path) -> int:
    """The size of the file at `path`, 0 if there is none."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class CachedStore(Store):
    """Reads go to the local copy when it is there and intact; writes go to both."""

    def __init__(self, remote: Store, directory: str | os.PathLike[str], max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"cache size must be positive, got {max_bytes}")
        self.remote = remote
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.url = remote.url
        self.concurrency = remote.concurrency
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing the fd
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(self.dir / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreUnavailable(f"cannot open the cache directory {self.dir}: {e}") from e
        with self._locked():
            self._write_count(self._evict(self._copies(), self.max_bytes))

    # -- the shared byte count -------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _copies(self) -> list[tuple[int, Path, int]]:
        """Every copy in the directory as (mtime, path, size), least recently used first."""
        found = []
        for dirpath, dirnames, filenames in os.walk(self.dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue  # the lock, the count and temporary files
                path = Path(dirpath) / name
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue  # evicted while we walked
                found.append((st.st_mtime_ns, path, st.st_size))
        return sorted(found)

    def _read_count(self) -> int:
        """The shared byte count (caller holds the lock); recounted if unreadable."""
        try:
            return int((self.dir / _COUNT).read_text())
        except (OSError, ValueError):
            used = sum(size for _, _, size in self._copies())
            self._write_count(used)
            return used

    def _write_count(self, used: int) -> None:
        try:
            (self.dir / _COUNT).write_text(str(used))
        except OSError:
            pass  # recounted by the next reader

    def _evict(self, copies: list[tuple[int, Path, int]], target: int) -> int:
        """Remove the least recently used `copies` until at most `target` bytes remain;
        return the bytes left."""
        used = sum(size for _, _, size in copies)
        for _, path, size in copies:
            if used <= target:
                break
            path.unlink(missing_ok=True)  # gone already: another process's eviction
            used -= size
        return used

    @property
    def used_bytes(self) -> int:
        """Bytes of local copies in the directory, as all processes sharing it count them."""
        with self._locked():
            return self._read_count()

    # -- local copies ----------------------------------------------------------------------
    def _local(self, key: str) -> bytes | None:
        """The intact local copy of `key`, or None; a damaged copy is dropped."""
        path = self.dir / key
        try:
            raw = path.read_bytes()
        except OSError:
            return None  # not cached, or evicted by another process or thread
        data = raw[_DIGEST:]
        if len(raw) < _DIGEST or _digest(data) != raw[:_DIGEST]:
            self._drop(key)
            return None
        try:
            os.utime(path)  # recency survives restarts through the mtime
        except OSError:
            pass  # evicted since the read: the bytes read are still whole
        return data

    def _remember(self, key: str, data: Buffer) -> None:
        size = len(data) + _DIGEST
        if size > self.max_bytes:
            return
        path = self.dir / key
        with self._locked():
            used = self._read_count() - _size(path)
            try:
                write_atomic(path, _digest(data) + bytes(data))
            except OSError:
                self._write_count(used + _size(path))  # a full disk only costs hits
                return
            used += size
            if used > self.max_bytes:
                used = self._evict(self._copies(), int(self.max_bytes * _LOW_WATER))
            self._write_count(used)

    def _drop(self, key: str) -> None:
        path = self.dir / key
        with self._locked():
            used = self._read_count() - _size(path)
            path.unlink(missing_ok=True)
            self._write_count(max(used, 0))

    # -- the Store core --------------------------------------------------------------------
    def _put(self, key: str, data: Buffer) -> None:
        self.remote.put(key, data)
        self._remember(key, data)  # write-through: what was just saved is usually read soon

    def _get(self, key: str) -> bytes:
        data = self._local(key)
        if data is None:
            data = self.remote.get(key)
            self._remember(key, data)
        return data

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        data = self._local(key)
        return data[start:end] if data is not None else self.remote.get_range(key, start, end)

    def _exists(self, key: str) -> bool:
        return self.remote.exists(key)

    def _delete(self, key: str) -> None:
        self.remote.delete(key)
        self._drop(key)

    def _list(self, prefix: str) -> Iterable[str]:
        return self.remote.list(prefix)

    def _scan(self, prefix: str) -> Iterable[ObjectInfo]:
        return self.remote.scan(prefix)

    def close(self) -> None:
        self.remote.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        super().close()
