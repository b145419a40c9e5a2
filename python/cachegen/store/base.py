"""The `Store` interface: backends implement six small blocking methods, this class builds the
public sync, async and batched API over them once."""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from .errors import InvalidKey, ObjectMissing, StoreError

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")
R = TypeVar("R")

# Portable keys: safe as file paths, S3 keys and Redis keys alike; no "." or ".." segments and no
# hidden names, which the file backend keeps for its temporary files.
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.=-]*"
_KEY = re.compile(rf"{_SEGMENT}(/{_SEGMENT})*")
_PREFIX = re.compile(rf"({_SEGMENT}/)*([A-Za-z0-9_][A-Za-z0-9_.=-]*)?")
MAX_KEY_LEN = 512


def check_key(key: str) -> str:
    """Return `key` if it is a portable key, else raise `InvalidKey`."""
    if not isinstance(key, str) or len(key) > MAX_KEY_LEN or not _KEY.fullmatch(key):
        raise InvalidKey(
            f"invalid key {key!r}: use '/'-separated segments of [A-Za-z0-9_.=-] that start "
            f"with a letter, digit or '_', at most {MAX_KEY_LEN} characters"
        )
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if some portable key could start with it, else raise `InvalidKey`."""
    if not isinstance(prefix, str) or len(prefix) > MAX_KEY_LEN or not _PREFIX.fullmatch(prefix):
        raise InvalidKey(f"invalid list prefix {prefix!r}")
    return prefix


def _check_range(start: int, end: int) -> None:
    if not 0 <= start < end:
        raise ValueError(f"byte range [{start}, {end}) must satisfy 0 <= start < end")


@dataclass(frozen=True)
class ObjectInfo:
    """A listed object: its key, size in bytes and age."""

    key: str
    size: int
    #: Seconds since the object was written. Never more than the true age: where a backend
    #: knows only the last access (Redis), it reports the time since then.
    age_s: float


class Store(ABC):
    """A flat key -> bytes object store.

    Each `put` is atomic: readers see the old object, the new one, or none, never a mix.
    `delete` of a missing key is a no-op. `get_range(key, start, end)` returns bytes
    ``[start, end)``, shorter if the object ends first; a range starting at or past the end
    raises `ObjectMissing`.
    """

    url: str
    #: Requests the batched and async forms run at once.
    concurrency: int = 8
    #: Whether a large read goes faster as parallel range requests (a network store, where
    #: each request has its own round trip and connection); False where reads are memory
    #: copies or local file reads, which splitting only slows.
    cheap_ranges: bool = True
    _pool: ThreadPoolExecutor | None = None

    # -- the core each backend implements (keys are already validated) --------------------
    @abstractmethod
    def _put(self, key: str, data: Buffer) -> None: ...

    @abstractmethod
    def _get(self, key: str) -> bytes: ...

    @abstractmethod
    def _get_range(self, key: str, start: int, end: int) -> bytes: ...

    @abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abstractmethod
    def _delete(self, key: str) -> None: ...

    @abstractmethod
    def _list(self, prefix: str) -> Iterable[str]: ...

    # -- sync ------------------------------------------------------------------------------
    def put(self, key: str, data: Buffer) -> None:
        """Store `data` under `key`, replacing any previous object atomically."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be bytes-like, not {type(data).__name__}")
        self._put(check_key(key), data)

    def get(self, key: str) -> bytes:
        """Return the object under `key`; raise `ObjectMissing` if there is none."""
        return self._get(check_key(key))

    def get_range(self, key: str, start: int, end: int) -> bytes:
        """Return bytes ``[start, end)`` of the object under `key`."""
        _check_range(start, end)
        data = self._get_range(check_key(key), start, end)
        if not data:
            raise ObjectMissing(key, f"range starts at {start}, past the end of the object")
        return data

    def exists(self, key: str) -> bool:
        """Whether an object is stored under `key`."""
        return self._exists(check_key(key))

    def delete(self, key: str) -> None:
        """Remove the object under `key`, if any."""
        self._delete(check_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Return the sorted keys that start with `prefix` (a plain string prefix)."""
        return sorted(self._list(check_prefix(prefix)))

    def scan(self, prefix: str = "") -> list[ObjectInfo]:
        """`list` with each object's size and age, sorted by key (for garbage collection)."""
        return sorted(self._scan(check_prefix(prefix)), key=lambda info: info.key)

    def _scan(self, prefix: str) -> Iterable[ObjectInfo]:
        raise StoreError(f"{type(self).__name__} does not report object ages")

    # -- batched ---------------------------------------------------------------------------
    def put_many(self, items: Mapping[str, Buffer] | Iterable[tuple[str, Buffer]]) -> None:
        """Store several objects, `concurrency` at a time; each put is atomic on its own."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        self._map(lambda kv: self.put(*kv), pairs)

    def get_many(self, keys: Sequence[str], *, missing_ok: bool = False) -> list[bytes | None]:
        """Return the objects under `keys` in order; None for missing ones if `missing_ok`."""

        def one(key: str) -> bytes | None:
            try:
                return self.get(key)
            except ObjectMissing:
                if missing_ok:
                    return None
                raise

        return self._map(one, list(keys))

    def _map(self, fn: Callable[[T], R], args: list[T]) -> list[R]:
        if len(args) <= 1 or self.concurrency <= 1:
            return [fn(a) for a in args]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="cachegen-store")
        return list(self._pool.map(fn, args))

    # -- async: the blocking calls run in threads; every backend client used here releases
    # the GIL while it waits, so this overlaps I/O as well as a native async client would.
    async def aput(self, key: str, data: Buffer) -> None:
        """Async `put`."""
        await asyncio.to_thread(self.put, key, data)

    async def aget(self, key: str) -> bytes:
        """Async `get`."""
        return await asyncio.to_thread(self.get, key)

    async def aget_range(self, key: str, start: int, end: int) -> bytes:
        """Async `get_range`."""
        return await asyncio.to_thread(self.get_range, key, start, end)

    async def aexists(self, key: str) -> bool:
        """Async `exists`."""
        return await asyncio.to_thread(self.exists, key)

    async def adelete(self, key: str) -> None:
        """Async `delete`."""
        await asyncio.to_thread(self.delete, key)

    async def alist(self, prefix: str = "") -> list[str]:
        """Async `list`."""
        return await asyncio.to_thread(self.list, prefix)

    async def aput_many(self, items: Mapping[str, Buffer] | Iterable[tuple[str, Buffer]]) -> None:
        """Async `put_many`."""
        await asyncio.to_thread(self.put_many, items)

    async def aget_many(
        self, keys: Sequence[str], *, missing_ok: bool = False
    ) -> list[bytes | None]:
        """Async `get_many`."""
        return await asyncio.to_thread(self.get_many, keys, missing_ok=missing_ok)

    # -- lifetime --------------------------------------------------------------------------
    def fresh(self) -> Store:
        """The same objects over new connections, for a request that must not wait behind a
        stalled one (a hedged read). Stores without pooled connections return themselves;
        the caller closes a store this returns when it is not `self`."""
        return self

    def close(self) -> None:
        """Release threads and connections; the store is unusable afterwards."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"
