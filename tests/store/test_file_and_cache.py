"""File backend atomicity across processes, and the LRU local cache."""

from __future__ import annotations

import multiprocessing as mp
import os
from pathlib import Path

from cachegen.store import CachedStore, FileStore, MemoryStore


def _write_many(root: str, byte: int) -> None:
    store = FileStore(root)
    for _ in range(20):
        store.put("shared/key", bytes([byte]) * (256 << 10))


def test_concurrent_process_writers_leave_one_whole_value(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_many, args=(str(tmp_path), b)) for b in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = FileStore(tmp_path).get("shared/key")
    assert len(data) == 256 << 10 and len(set(data)) == 1
    assert os.listdir(tmp_path / "shared") == ["key"]  # no temporary files left behind


def test_temporary_files_are_not_listed(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("a/b", b"x")
    (tmp_path / "a" / ".tmp-b.123").write_bytes(b"half")  # what a killed writer leaves
    assert store.list() == ["a/b"]


def test_lru_evicts_least_recently_used(tmp_path: Path) -> None:
    remote = MemoryStore()
    cache = CachedStore(remote, tmp_path, max_bytes=3 * 1100)
    for k in "abc":
        cache.put(k, k.encode() * 1000)
    cache.get("a")  # a is now the most recent; b the least
    cache.put("d", b"d" * 1000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c", "d"]
    assert cache.get("b") == b"b" * 1000  # a miss, served by the remote store
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= cache.max_bytes


def test_hits_do_not_touch_the_remote(tmp_path: Path) -> None:
    remote = MemoryStore()
    cache = CachedStore(remote, tmp_path, max_bytes=1 << 20)
    cache.put("k", b"value")
    remote.delete("k")  # the remote lost it: only the local copy can answer
    assert cache.get("k") == b"value"
    assert cache.get_range("k", 1, 3) == b"al"


def test_damaged_local_copy_is_refetched(tmp_path: Path) -> None:
    remote = MemoryStore()
    cache = CachedStore(remote, tmp_path, max_bytes=1 << 20)
    cache.put("k", b"value" * 100)
    (tmp_path / "k").write_bytes((tmp_path / "k").read_bytes()[:-3])  # truncated on disk
    assert cache.get("k") == b"value" * 100
    (tmp_path / "k").unlink()  # evicted by another process
    assert cache.get("k") == b"value" * 100


def test_cache_state_survives_reopen(tmp_path: Path) -> None:
    remote = MemoryStore()
    cache = CachedStore(remote, tmp_path, max_bytes=1 << 20)
    cache.put_many({"x": b"1" * 500, "y": b"2" * 500})  # concurrent: no write order
    os.utime(tmp_path / "x", ns=(1, 1))  # x is the least recently used copy
    reopened = CachedStore(remote, tmp_path, max_bytes=600)  # smaller: evicts on open
    assert [p.name for p in tmp_path.iterdir()] == ["y"]
    assert reopened.get("x") == b"1" * 500
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # the refetched copy evicts y


def test_objects_larger_than_the_cache_bypass_it(tmp_path: Path) -> None:
    cache = CachedStore(MemoryStore(), tmp_path, max_bytes=100)
    cache.put("big", b"x" * 1000)
    assert cache.get("big") == b"x" * 1000
    assert list(tmp_path.iterdir()) == []
