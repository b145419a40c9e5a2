"""File backend atomicity across processes, and the LRU local cache."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cachegen.store import CachedStore, FileStore, MemoryStore, ObjectMissing


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


def copies(directory: Path) -> list[str]:
    """The cached copies in `directory` (not the cache's hidden lock and count files)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def test_lru_evicts_least_recently_used(tmp_path: Path) -> None:
    remote = MemoryStore()
    cache = CachedStore(remote, tmp_path, max_bytes=3 * 1100)
    for k in "abc":
        cache.put(k, k.encode() * 1000)
    cache.get("a")  # a is now the most recent; b the least
    cache.put("d", b"d" * 1000)
    assert copies(tmp_path) == ["a", "c", "d"]
    assert cache.get("b") == b"b" * 1000  # a miss, served by the remote store
    assert sum((tmp_path / k).stat().st_size for k in copies(tmp_path)) <= cache.max_bytes


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
    assert copies(tmp_path) == ["y"]
    assert reopened.get("x") == b"1" * 500
    assert copies(tmp_path) == ["x"]  # the refetched copy evicts y


def test_objects_larger_than_the_cache_bypass_it(tmp_path: Path) -> None:
    cache = CachedStore(MemoryStore(), tmp_path, max_bytes=100)
    cache.put("big", b"x" * 1000)
    assert cache.get("big") == b"x" * 1000
    assert copies(tmp_path) == []


def _disk_bytes(directory: Path) -> int:
    return sum(
        (Path(d) / f).stat().st_size
        for d, dirs, files in os.walk(directory)
        for f in files
        if not f.startswith(".")
    )


def _churn(cache: CachedStore, seed: int, rounds: int = 300) -> None:
    """Puts, gets and deletes of overlapping keys, as a busy loader would do them."""
    rng = random.Random(seed)
    for _ in range(rounds):
        key = f"k/{rng.randrange(40)}"
        op = rng.random()
        if op < 0.5:
            cache.put(key, bytes([seed]) * rng.randrange(500, 3000))
        elif op < 0.9:
            try:
                data = cache.get(key)
            except ObjectMissing:
                continue
            assert len(set(data)) == 1  # one writer's whole value, never a torn copy
        else:
            cache.delete(key)


def test_two_caches_and_threads_share_one_count(tmp_path: Path) -> None:
    remote = MemoryStore()
    limit = 20_000  # far below what the churn writes: evictions race with reads
    caches = [CachedStore(remote, tmp_path / "lru", limit) for _ in range(2)]
    with ThreadPoolExecutor(6) as pool:
        # Any exception, a bare FileNotFoundError included, surfaces through result().
        for f in [pool.submit(_churn, caches[i % 2], i) for i in range(6)]:
            f.result()
    actual = _disk_bytes(tmp_path / "lru")
    assert caches[0].used_bytes == caches[1].used_bytes == actual
    assert 0 < actual <= limit


def _churn_process(remote_root: str, cache_dir: str, seed: int) -> None:
    _churn(CachedStore(FileStore(remote_root), cache_dir, 20_000), seed)


def test_processes_share_one_count(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    args = (str(tmp_path / "remote"), str(tmp_path / "lru"))
    procs = [ctx.Process(target=_churn_process, args=(*args, seed)) for seed in (1, 2, 3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    cache = CachedStore(FileStore(args[0]), args[1], 20_000)
    assert 0 < cache.used_bytes == _disk_bytes(tmp_path / "lru") <= 20_000


def test_count_recovers_from_outside_changes(tmp_path: Path) -> None:
    cache = CachedStore(MemoryStore(), tmp_path, 10_000)
    cache.put_many({f"k{i}": b"x" * 1000 for i in range(5)})
    (tmp_path / "k0").unlink()  # removed behind the cache's back
    (tmp_path / ".used").write_text("garbage")  # and a damaged count
    assert cache.used_bytes == _disk_bytes(tmp_path) == 4 * 1016
    assert cache.get("k0") == b"x" * 1000  # a miss, refetched
    assert cache.used_bytes == _disk_bytes(tmp_path) == 5 * 1016
