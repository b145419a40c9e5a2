"""`cachegen inspect STORE`: one line of at most 120 characters per context, damaged manifests
reported on their line; `cachegen --version`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cachegen
from cachegen.cli import LINE_WIDTH, main
from cachegen.context import list_contexts, save_context
from cachegen.context.keys import manifest_key
from cachegen.store import FileStore, ObjectCorrupted, StoreUnavailable


def _kv(tokens: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((2, 2, tokens, 2, 8)).astype(np.float16)


def _store_of(tmp_path: Path, contexts: int) -> tuple[FileStore, list[str]]:
    """`contexts` contexts of 48 tokens in chunks of 16 (and their manifest keys): all share
    their first chunk, those of equal index parity their second too."""
    store = FileStore(tmp_path / "kv")
    keys = []
    for i in range(contexts):
        ids = np.r_[np.arange(16), np.arange(16) + 100 * (i % 2), np.arange(16) + 1000 * i]
        kv = np.concatenate([_kv(16, 0), _kv(16, i % 2), _kv(16, 1000 + i)], axis=2)
        ctx = save_context(store, "tiny-model", ids, kv, levels=(1, 15, 27), chunk_tokens=16)
        keys.append(manifest_key(ctx.chunks[-1].hash))
    return store, keys


def test_store_of_70_contexts_one_short_line_each(tmp_path: Path, capsys) -> None:
    store, made = _store_of(tmp_path, 70)
    keys = store.list("contexts/")
    damaged = made[17]
    store.put(damaged, store.get(damaged)[:-40])  # a truncated manifest
    assert main(["inspect", store.url]) == 1  # listed in full, and the damage reported
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 70 and max(map(len, lines)) <= LINE_WIDTH
    for key, line in zip(keys, lines, strict=True):
        assert line.startswith(Path(key).stem[:12])
        if key == damaged:
            assert "ERROR ObjectCorrupted: object manifest is corrupted: not sealed JSON" in line
            continue
        # Chunks 0 and 1 are held by other readable contexts (34 others of each parity).
        fields = line.split()
        assert fields[1:8] == ["tiny-model", "48", "tok", "3", "chunks", "2", "shared"]
        assert fields[8].startswith("L1:") and fields[10].startswith("L27:")


def test_store_listing_json_and_sizes(tmp_path: Path, capsys) -> None:
    store, made = _store_of(tmp_path, 3)
    damaged = made[0]
    store.put(damaged, b'{"blake2b": "00", "body": {}}')
    assert main(["inspect", store.url, "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["store"] == store.url and len(doc["contexts"]) == 3
    by_key = {ctx["key"]: ctx for ctx in doc["contexts"]}
    assert "checksum mismatch" in by_key[damaged]["error"]
    listed = dict(list_contexts(store))
    assert isinstance(listed[damaged], ObjectCorrupted)
    # Context 1 shares chunk 0 with context 2; context 2 shares chunk 1 with nobody readable.
    assert [by_key[k]["shared_chunks"] for k in made[1:]] == [1, 1]
    for ctx in (by_key[k] for k in made[1:]):
        summary = listed[ctx["key"]]
        sizes = {str(lv): sum(c.levels[lv].size for c in summary.chunks) for lv in (1, 15, 27)}
        assert ctx["bytes_per_level"] == sizes and ctx["tokens"] == 48
        assert ctx["chunks"] == 3
        assert sizes["1"] < sizes["15"] < sizes["27"]


def test_long_names_and_many_levels_stay_within_the_width(tmp_path: Path, capsys) -> None:
    store = FileStore(tmp_path / "kv")
    name = "organisation/a-model-with-a-very-long-name-" + "x" * 80
    save_context(store, name, np.arange(40), _kv(40, 0), levels=cachegen.LEVELS)
    assert main(["inspect", store.url]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert len(line) == LINE_WIDTH and line.endswith("~")
    assert "organisation/a-model-with-a~" in line and "L1:" in line


@pytest.mark.parametrize(
    "text",
    [b"", b"not json", b"[1, 2]", b'{"blake2b": 1}'],
)
def test_malformed_manifests_are_errors_not_crashes(tmp_path: Path, text: bytes) -> None:
    store, (_, key) = _store_of(tmp_path, 2)
    store.put(key, text)
    listed = dict(list_contexts(store))
    assert isinstance(listed[key], ObjectCorrupted) and len(listed) == 2


def test_manifest_with_wrong_field_types_is_an_error(tmp_path: Path) -> None:
    from cachegen.context.keys import seal, unseal

    store, (key,) = _store_of(tmp_path, 1)
    body = unseal(key, store.get(key))
    for field, bad in [("num_tokens", "48"), ("model_id", None), ("levels", [1, "x"])]:
        store.put(key, seal(key, body | {field: bad}))
        (result,) = (s for _, s in list_contexts(store))
        assert isinstance(result, ObjectCorrupted) and repr(field) in str(result)


def test_version() -> None:
    # The package under test, wherever it is imported from (installed, or a source tree on
    # PYTHONPATH with its built core).
    out = subprocess.run(
        [sys.executable, "-m", "cachegen.cli", "--version"],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ | {"PYTHONPATH": str(Path(cachegen.__file__).parents[1])},
    ).stdout
    assert out.strip() == f"cachegen {cachegen.__version__}"


class _FlakyStore(FileStore):
    """A file store whose reads of one key fail as an unreachable backend's would."""

    bad = ""

    def _get(self, key: str) -> bytes:
        if key == self.bad:
            raise StoreUnavailable(f"reading {key}: connection reset")
        return super()._get(key)


def test_a_failing_read_is_reported_on_its_line(tmp_path: Path) -> None:
    _, made = _store_of(tmp_path, 3)
    store = _FlakyStore(tmp_path / "kv")
    store.bad = made[1]
    listed = dict(list_contexts(store))
    assert isinstance(listed[made[1]], StoreUnavailable)
    assert [listed[k].num_tokens for k in (made[0], made[2])] == [48, 48]


def test_unreachable_store_is_one_error_line(capsys) -> None:
    assert main(["inspect", "nosuch://bucket"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cachegen inspect: ") and err.count("\n") == 1
