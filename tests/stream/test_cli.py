"""The `cachegen` CLI: inspect a blob and a store; bench dispatch errors."""

from __future__ import annotations

import json

import numpy as np
from streamkit import store_context

import cachegen
from cachegen.cli import main
from cachegen.store import FileStore


def test_inspect_blob(tmp_path, capsys) -> None:
    kv = np.random.default_rng(0).standard_normal((2, 2, 16, 2, 8)).astype(np.float16)
    path = tmp_path / "x.cg"
    path.write_bytes(cachegen.encode(kv, level=2))
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["level"] == 2 and info["tokens"] == 16 and info["num_layers"] == 2


def test_inspect_store(tmp_path, capsys) -> None:
    store = FileStore(tmp_path / "kv")
    store_context(store, 128)
    assert main(["inspect", store.url, "--json"]) == 0
    (ctx,) = json.loads(capsys.readouterr().out)["contexts"]
    assert ctx["tokens"] == 128 and ctx["chunks"] == 2
    assert set(ctx["bytes_per_level"]) == {"1", "3", "5"}
    assert ctx["quality"]["kl"]["1"] == 0.05
    assert main(["inspect", store.url]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert " 128 tok    2 chunks    0 shared  L1:" in line
