"""Garbage collection on real stores: what no manifest reaches goes, what one reaches stays,
young objects stay, a concurrent writer keeps its contexts whole; and the `cachegen gc` CLI."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_context import CHUNK, MODEL, make_kv, tokens

from cachegen.cli import main as cli
from cachegen.context import collect_garbage, open_context, save_context
from cachegen.context.keys import manifest_key
from cachegen.store import ContextMissing, FileStore, Store

KEY = b"gc-test-auth-key-0123456789"


def assert_whole(store: Store, ids: np.ndarray, **kw: object) -> None:
    """The context of `ids` is complete and every object it lists verifies."""
    ctx = open_context(store, MODEL, ids, chunk_tokens=CHUNK, **kw)
    assert ctx.complete
    for i, chunk in enumerate(ctx.chunks):
        ctx.fetch_tokens(i)
        for level in chunk.levels:
            ctx.fetch(i, level)


def make_garbage(store: Store) -> tuple[dict[str, np.ndarray], set[str]]:
    """Live contexts and garbage of every kind; returns the live token ids and the garbage."""
    live = {"a": tokens(300, seed=1), "authed": tokens(200, seed=2)}
    save_context(store, MODEL, live["a"], make_kv(300), levels=[1], chunk_tokens=CHUNK)
    save_context(
        store, MODEL, live["authed"], make_kv(200), levels=[1], chunk_tokens=CHUNK, auth_key=KEY
    )
    before = set(store.list())
    # A context sharing a's first two chunks, at an extra level, whose manifest is then lost:
    # its own third chunk is garbage, the level it added to the shared chunks is not (their
    # records, which a's manifest lists, reference it).
    a2 = np.concatenate([live["a"][:256], tokens(100, seed=3)])
    third = save_context(store, MODEL, a2, make_kv(356), levels=[1, 3], chunk_tokens=CHUNK)
    third_dir = f"chunks/{third.chunks[2].hash[:2]}/{third.chunks[2].hash}/"
    store.delete(manifest_key(third.chunks[2].hash))
    a2_garbage = {k for k in set(store.list()) - before if k.startswith(third_dir)}
    assert len(a2_garbage) == 4 and len(set(store.list()) - before) == 6
    # A writer killed before its manifest: whole chunks, no context.
    orphan = tokens(200, seed=4)
    keep = set(store.list())
    save_context(store, MODEL, orphan, make_kv(200), levels=[1], chunk_tokens=CHUNK)
    orphan_keys = set(store.list()) - keep
    [orphan_manifest] = [k for k in orphan_keys if k.startswith("contexts/")]
    store.delete(orphan_manifest)
    # A stray blob in a live chunk's directory, a damaged manifest, and foreign data.
    live_chunk = open_context(store, MODEL, live["a"], chunk_tokens=CHUNK).chunks[0].hash
    stray = f"chunks/{live_chunk[:2]}/{live_chunk}/L9-{'0' * 32}.cg"
    store.put(stray, b"no record lists me")
    damaged = f"contexts/ff/{'f' * 64}.json"
    store.put(damaged, b"{not json")
    store.put("other/data", b"not cachegen's")
    return live, a2_garbage | (orphan_keys - {orphan_manifest}) | {stray, damaged}


def test_collects_exactly_the_unreachable(store: Store) -> None:
    live, garbage = make_garbage(store)
    everything = set(store.list())
    young = collect_garbage(store, grace_s=3600)  # all of it was just written
    assert young.deleted == [] and set(store.list()) == everything
    dry = collect_garbage(store, grace_s=0, dry_run=True)
    assert set(dry.deleted) == garbage and set(store.list()) == everything
    report = collect_garbage(store, grace_s=0)
    assert set(report.deleted) == garbage
    assert report.bytes_freed > 0 and report.live == len(everything) - len(garbage) - 1
    assert set(store.list()) == everything - garbage  # foreign data stays too
    assert_whole(store, live["a"])
    assert_whole(store, live["authed"], auth_key=KEY)
    assert collect_garbage(store, grace_s=0).deleted == []  # nothing left to find


def _backdate(root: Path, seconds: float) -> None:
    old = time.time() - seconds
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(Path(dirpath) / f, (old, old))


def test_reused_old_chunks_become_young(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    ids = tokens(300)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK)
    [manifest] = store.list("contexts/")
    store.delete(manifest)  # a killed writer's chunks, an hour old
    _backdate(tmp_path, 3600)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK)  # reuses them
    assert collect_garbage(store, grace_s=600).deleted == []
    assert_whole(store, ids)


def test_concurrent_writer_keeps_its_contexts(tmp_path: Path) -> None:
    """A collector in a loop while a writer saves contexts, some sharing prefixes with live
    ones: every context the writer committed is whole; the old garbage is gone."""
    store = FileStore(tmp_path)
    _, garbage = make_garbage(store)
    _backdate(tmp_path, 7200)
    base = tokens(512, seed=7)
    save_context(store, MODEL, base, make_kv(512), levels=[1], chunk_tokens=CHUNK)
    saved: list[np.ndarray] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for i in range(6):
                ids = np.concatenate([base[: 128 * (i % 4)], tokens(200 + 30 * i, seed=10 + i)])
                save_context(
                    store, MODEL, ids, make_kv(len(ids), seed=i), levels=[1, 3], chunk_tokens=CHUNK
                )
                saved.append(ids)
        finally:
            done.set()

    runs = []
    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        runs.append(collect_garbage(store, grace_s=600))
    thread.join()
    assert len(saved) == 6 and len(runs) >= 1
    # Time passes: the tombstones of the records deleted meanwhile age, and their blobs go.
    for _ in range(2):
        _backdate(tmp_path, 7200)
        collect_garbage(store, grace_s=600)
    for ids in [*saved, base]:
        assert_whole(store, ids)
    assert not garbage & set(store.list())
    assert not [k for k in store.list() if k.endswith("tombstone")]


class _CollectOnFirstRecord(FileStore):
    """A file store that runs the collector once, right when a writer puts its first chunk
    record: after the writer read the stored records, before it commits its manifest."""

    def _put(self, key: str, data: bytes) -> None:
        if key.endswith("record.json") and not getattr(self, "collected", None):
            self.collected = collect_garbage(FileStore(self.root), grace_s=600)
        super()._put(key, data)


def test_writer_reusing_a_chunk_the_collector_deletes(tmp_path: Path) -> None:
    """The collector deletes old, unreferenced records while a writer is reusing them: the
    writer's context stays whole, then and after the grace period."""
    ids = tokens(300)
    store = FileStore(tmp_path)
    save_context(store, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK)
    [manifest] = store.list("contexts/")
    store.delete(manifest)  # a killed writer's chunks, old and unreferenced
    _backdate(tmp_path, 7200)
    racing = _CollectOnFirstRecord(tmp_path)
    save_context(racing, MODEL, ids, make_kv(300), levels=[1], chunk_tokens=CHUNK)
    assert any(k.endswith("record.json") for k in racing.collected.deleted)  # it did race
    assert_whole(store, ids)
    for _ in range(2):
        _backdate(tmp_path, 7200)
        collect_garbage(store, grace_s=600)
    assert_whole(store, ids)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = FileStore(tmp_path)
    _, garbage = make_garbage(store)
    url = tmp_path.as_uri()
    assert cli(["gc", url, "--grace", "0", "--dry-run", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and set(report["deleted"]) == garbage
    assert garbage <= set(store.list())
    assert cli(["gc", url, "--grace", "0"]) == 0
    out = capsys.readouterr().out
    assert f"deleted {len(garbage)}" in out and not garbage & set(store.list())
    with pytest.raises(ContextMissing):
        open_context(store, MODEL, tokens(200, seed=4), chunk_tokens=CHUNK)


def test_cli_errors_hide_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    secret = "gc-cli-redis-password"
    assert cli(["gc", f"redis://:{secret}@127.0.0.1:1/0"]) == 2
    err = capsys.readouterr().err
    assert "cachegen gc:" in err and secret not in err
    assert cli(["gc", f"s3://AKIA:{secret}@bucket/kv"]) == 2
    assert secret not in capsys.readouterr().err
