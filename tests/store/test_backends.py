"""The Store contract, run against every backend, bare and behind the LRU cache."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from cachegen.store import InvalidKey, ObjectMissing, Store, StoreError


def test_put_get_exists_delete(store: Store) -> None:
    assert not store.exists("a/b")
    store.put("a/b", b"hello")
    assert store.exists("a/b")
    assert store.get("a/b") == b"hello"
    store.put("a/b", bytearray(b"replaced"))
    assert store.get("a/b") == b"replaced"
    store.delete("a/b")
    assert not store.exists("a/b")
    store.delete("a/b")  # deleting a missing key is a no-op


def test_missing_is_typed(store: Store) -> None:
    with pytest.raises(ObjectMissing) as e:
        store.get("no/such")
    assert isinstance(e.value, StoreError) and isinstance(e.value, LookupError)
    with pytest.raises(ObjectMissing):
        store.get_range("no/such", 0, 10)


def test_empty_object(store: Store) -> None:
    store.put("empty", b"")
    assert store.exists("empty") and store.get("empty") == b""


def test_list_is_a_string_prefix(store: Store) -> None:
    for key in ["a/b/1", "a/b/2", "a/bc/3", "a/x", "b"]:
        store.put(key, key.encode())
    assert store.list() == ["a/b/1", "a/b/2", "a/bc/3", "a/x", "b"]
    assert store.list("a/b") == ["a/b/1", "a/b/2", "a/bc/3"]
    assert store.list("a/b/") == ["a/b/1", "a/b/2"]
    assert store.list("a/b/1") == ["a/b/1"]
    assert store.list("zz") == []


def test_get_range(store: Store) -> None:
    data = bytes(range(256)) * 4
    store.put("r", data)
    assert store.get_range("r", 0, 10) == data[:10]
    assert store.get_range("r", 1000, 2000) == data[1000:]  # clipped at the end
    with pytest.raises(ObjectMissing):
        store.get_range("r", 1024, 1100)  # starts past the end
    with pytest.raises(ValueError):
        store.get_range("r", 5, 5)


def test_large_object_multipart_and_ranged(store: Store) -> None:
    # 20 MiB: several S3 multipart parts on the way up and parallel range gets on the way down.
    data = os.urandom(20 << 20)
    store.put("big", memoryview(data))
    assert store.get("big") == data
    assert store.get_range("big", 9 << 20, (9 << 20) + 5) == data[9 << 20 : (9 << 20) + 5]


def test_batched(store: Store) -> None:
    items = {f"m/{i}": os.urandom(i * 100) for i in range(1, 30)}
    store.put_many(items)
    assert store.get_many(list(items)) == list(items.values())
    assert store.get_many(["m/1", "nope"], missing_ok=True) == [items["m/1"], None]
    with pytest.raises(ObjectMissing):
        store.get_many(["m/1", "nope"])


def test_async(store: Store) -> None:
    async def run() -> None:
        await store.aput("x/1", b"one")
        await store.aput_many([("x/2", b"two"), ("x/3", b"three")])
        assert await store.aget("x/1") == b"one"
        assert await store.aget_range("x/3", 1, 3) == b"hr"
        assert await store.aexists("x/2")
        assert await store.alist("x/") == ["x/1", "x/2", "x/3"]
        got = await asyncio.gather(*(store.aget(f"x/{i}") for i in (1, 2, 3)))
        assert got == [b"one", b"two", b"three"]
        assert await store.aget_many(["x/1", "x/9"], missing_ok=True) == [b"one", None]
        await store.adelete("x/1")
        assert not await store.aexists("x/1")

    asyncio.run(run())


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../up", "a/../b", ".hidden", "a/.tmp-x", "sp ace", "a*", "k" * 600]
)
def test_invalid_keys(store: Store, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)


def test_invalid_prefix_and_data(store: Store) -> None:
    with pytest.raises(InvalidKey):
        store.list("../")
    with pytest.raises(TypeError):
        store.put("k", "text")  # type: ignore[arg-type]


def test_concurrent_overwrites_are_atomic(store: Store) -> None:
    """Readers racing writers of one key see one writer's whole value, never a mix."""
    values = [bytes([i]) * (1 << 20) for i in range(4)]
    store.put("race", values[0])
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.append(store.get("race"))

    readers = [threading.Thread(target=read) for _ in range(2)]
    for t in readers:
        t.start()
    store.put_many([("race", v) for v in values * 3])
    stop.set()
    for t in readers:
        t.join()
    assert seen and all(v in values for v in seen)
