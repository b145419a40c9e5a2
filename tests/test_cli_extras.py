"""A command whose optional extra is missing ends in one line naming the extra to install; saving
a context without zstandard says which extra brings it; what the core install covers
(stored-context listing, the default store) needs no extra."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cachegen.cli import main
from cachegen.context import save_context
from cachegen.store import FileStore, MemoryStore


def _hide(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """Make `import module` fail as it does where the module is not installed."""
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "cachegen.demo", raising=False)


def test_demo_without_torch_names_the_extras_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _hide(monkeypatch, "torch", "transformers")
    assert main(["demo", "--tokens", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'cachegen[hf,store]'" in err and err.startswith("cachegen demo: ")


def test_inspect_lists_a_store_without_zstandard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    store = FileStore(tmp_path / "kv")
    kv = np.random.default_rng(0).standard_normal((2, 2, 32, 2, 8)).astype(np.float16)
    save_context(store, "tiny-model", np.arange(32), kv, levels=(15,), chunk_tokens=16)
    _hide(monkeypatch, "zstandard")
    assert main(["inspect", (tmp_path / "kv").as_uri()]) == 0
    assert "tiny-model" in capsys.readouterr().out


def test_saving_a_context_without_zstandard_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _hide(monkeypatch, "zstandard")
    kv = np.zeros((1, 2, 16, 1, 8), np.float16)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'cachegen\[store\]'"):
        save_context(MemoryStore(), "m", np.arange(16), kv, levels=(15,))


def test_an_unrelated_missing_module_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the extras' modules become a one-line hint; a bug's ImportError stays visible."""
    import cachegen.cli as cli

    def broken(args: object) -> int:
        import cachegen_no_such_module  # noqa: F401

        return 0

    monkeypatch.setattr(cli, "_inspect", broken)
    with pytest.raises(ModuleNotFoundError):
        main(["inspect", "x.cgkv"])
