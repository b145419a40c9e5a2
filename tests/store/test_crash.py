"""Crash safety: a writer killed mid-save, or a server gone mid-upload, never leaves a context
half-visible; readers see no context, or a whole one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from store_servers import S3_CREDENTIALS, MotoServer

import cachegen.store
from cachegen.context import Context, open_context, save_context
from cachegen.store import ContextMissing, Store, StoreUnavailable

WRITER = Path(__file__).with_name("crash_writer.py")


def context_inputs(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The same (token ids, kv) that crash_writer.py derives from `seed`."""
    rng = np.random.default_rng(seed)
    kv = rng.normal(size=(2, 2, n, 2, 16)).astype(np.float32)
    return rng.integers(0, 49152, size=n), kv


def assert_whole(ctx: Context) -> None:
    """Every chunk the reader is shown loads at every level it lists."""
    for i, chunk in enumerate(ctx.chunks):
        assert len(ctx.fetch_tokens(i)) == chunk.stop - chunk.start
        for level in chunk.levels:
            assert ctx.load(i, level).shape[2] == chunk.stop - chunk.start


def assert_none_or_whole(store: Store, ids: np.ndarray, levels: list[list[int]]) -> None:
    try:
        ctx = open_context(store, "m", ids, chunk_tokens=128)
    except ContextMissing:
        return
    assert_whole(ctx)
    if ctx.complete:
        assert ctx.prefix_tokens == len(ids) and ctx.levels in levels


@pytest.mark.parametrize("backend", ["file", "s3", "redis"])
@pytest.mark.parametrize("kill_after", [1, 9, 21, 30, 33])  # 33 puts in all
def test_sigkilled_writer(backend: str, kill_after: int, backend_url) -> None:
    url, options = backend_url(backend)
    store = cachegen.store.open(url, **options)
    old_ids, old_kv = context_inputs(0, 600)
    save_context(store, "m", old_ids, old_kv, levels=[1], chunk_tokens=128)
    # The writer re-saves that context with more levels, then saves a new one.
    plan = [[0, 600, [1, 2, 3]], [1, 500, [1, 2]]]
    env = os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, json.dumps(options), json.dumps(plan)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    for _ in range(kill_after):
        line = proc.stdout.readline()
        assert line and line != "done\n", f"writer finished before put {kill_after}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)

    old = open_context(store, "m", old_ids, chunk_tokens=128)
    assert old.complete and old.levels in ([1], [1, 2, 3])
    assert_whole(old)
    assert_none_or_whole(store, context_inputs(1, 500)[0], [[1, 2]])


@pytest.fixture
def own_s3() -> MotoServer:
    """A private S3 server this test may stop and restart (moto keeps its data in-process)."""
    server = MotoServer()
    yield server
    server.stop()


def test_s3_stopped_mid_save(own_s3: MotoServer) -> None:
    bucket = own_s3.bucket()
    url = own_s3.url(bucket) + "&timeout=2&max_retries=1"
    store = cachegen.store.open(url, **S3_CREDENTIALS)
    old_ids, old_kv = context_inputs(0, 300)
    save_context(store, "m", old_ids, old_kv, levels=[1], chunk_tokens=128)

    new_ids, new_kv = context_inputs(1, 2000)
    puts = threading.Semaphore(0)
    put = store._put

    def counted_put(key: str, data: bytes) -> None:
        puts.release()
        time.sleep(0.02)
        put(key, data)

    store._put = counted_put  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def save() -> None:
        try:
            save_context(store, "m", new_ids, new_kv, levels=[1, 2], chunk_tokens=128)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    writer = threading.Thread(target=save)
    writer.start()
    for _ in range(10):
        assert puts.acquire(timeout=30)
    own_s3.stop()
    writer.join(60)
    assert not writer.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable), errors
    assert "127.0.0.1" in str(errors[0])

    own_s3.start()
    store._put = put  # type: ignore[method-assign]
    assert_none_or_whole(store, new_ids, [[1, 2]])
    assert not open_context(store, "m", new_ids, chunk_tokens=128).complete
    old = open_context(store, "m", old_ids, chunk_tokens=128)
    assert old.complete
    assert_whole(old)


def test_s3_stopped_mid_multipart_put(own_s3: MotoServer) -> None:
    url = own_s3.url(own_s3.bucket()) + "&timeout=2&max_retries=1&part_size=5242880"
    store = cachegen.store.open(url, **S3_CREDENTIALS, concurrency=1)
    data = os.urandom(96 << 20)
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            store.put("big", data)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    writer = threading.Thread(target=upload)
    writer.start()
    time.sleep(0.3)
    own_s3.stop()
    writer.join(60)
    own_s3.start()
    assert len(errors) == 1 and isinstance(errors[0], StoreUnavailable), errors
    assert not store.exists("big")
