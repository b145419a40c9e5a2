"""`file:///path`: objects as files under a root directory, the embedded default."""

from __future__ import annotations

import errno
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from cachegen.paths import user_cache_dir

from .base import Buffer, ObjectInfo, Store
from .errors import ObjectMissing, StoreUnavailable

TMP_PREFIX = ".tmp-"


def default_root() -> Path:
    """The default store directory, under the user's cache directory."""
    return user_cache_dir() / "store"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: Buffer) -> None:
    """Write `path` so that readers see the old file, the new one or none, even across a crash.

    The bytes go to a uniquely named temporary file in the same directory, are fsynced, then
    renamed over `path` (atomic on POSIX); the directory is fsynced so the rename survives a
    power loss. Concurrent writers each use their own temporary file; the last rename wins.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class FileStore(Store):
    """Objects stored as files; the key's '/' separated segments become directories."""

    cheap_ranges = False

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.url = self.root.as_uri() if self.root.is_absolute() else str(self.root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreUnavailable(f"cannot create store directory {self.root}: {e}") from e

    def _path(self, key: str) -> Path:
        return self.root / key

    def _put(self, key: str, data: Buffer) -> None:
        try:
            write_atomic(self._path(key), data)
        except OSError as e:
            raise StoreUnavailable(f"cannot write {key!r} under {self.root}: {e}") from e

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectMissing(key) from e
        except OSError as e:
            raise StoreUnavailable(f"cannot read {key!r} under {self.root}: {e}") from e

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as e:
            raise ObjectMissing(key) from e
        except OSError as e:
            raise StoreUnavailable(f"cannot read {key!r} under {self.root}: {e}") from e

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _delete(self, key: str) -> None:
        try:
            self._path(key).unlink(missing_ok=True)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.EISDIR):
                raise StoreUnavailable(f"cannot delete {key!r} under {self.root}: {e}") from e

    def _scan(self, prefix: str) -> Iterator[ObjectInfo]:
        now = time.time()
        for key in self._list(prefix):
            try:
                st = self._path(key).stat()
            except FileNotFoundError:
                continue  # deleted since it was listed
            yield ObjectInfo(key, st.st_size, max(now - st.st_mtime, 0.0))

    def _list(self, prefix: str) -> Iterator[str]:
        # Walk only the deepest directory the prefix names, not the whole tree.
        base = self.root / prefix.rpartition("/")[0]
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in filenames:
                key = name if rel == "." else f"{rel}/{name}"
                if not name.startswith(".") and key.startswith(prefix):
                    yield key
