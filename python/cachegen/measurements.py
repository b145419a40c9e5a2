"""Calibration measurements kept on disk as they are made, with a progress bar of passes.

Calibration runs hundreds of model passes; each result is written under the user cache
directory (`cachegen.paths.user_cache_dir()`) as soon as it exists, in a folder named by a
digest of the model, the texts and the settings, so a rerun after a failure (or Ctrl-C) measures
only what is missing. The folder is removed once the profile is made.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .paths import user_cache_dir

#: Bumped when what is stored, or how it is measured, changes: older folders are not reused.
SCHEMA = 1


def run_digest(model: Any, texts: Sequence[Any], settings: dict[str, Any]) -> str:
    """Hex digest of everything the measurements depend on: the model's config and weights,
    the token ids and the measurement settings."""
    import torch

    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"schema": SCHEMA, **settings}, sort_keys=True, default=str).encode())
    h.update(model.config.to_json_string(use_diff=False).encode())
    for name, t in model.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.detach().reshape(-1).cpu().contiguous().view(torch.uint8).numpy().tobytes())
    for ids in texts:
        h.update(f"text:{tuple(ids.shape)}".encode())
        h.update(ids.detach().cpu().numpy().astype("<i8").tobytes())
    return h.hexdigest()


class Measurements:
    """Named results (floats, or arrays) that are loaded when stored, else measured and stored.

    `folder` None keeps nothing on disk. Every result, loaded or measured, advances the bar.
    """

    def __init__(self, folder: Path | None, total: int, progress: bool) -> None:
        from tqdm import tqdm

        self.folder = folder
        self.values = _read_values(folder / "values.json") if folder else {}
        #: Results measured in this run (the rest were loaded).
        self.measured = 0
        self._bar = tqdm(
            total=total,
            desc="calibrate",
            unit="pass",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
        )

    @classmethod
    def for_run(cls, digest: str | None, total: int, progress: bool) -> Measurements:
        """Results of the run with this digest, under the user cache dir (None: in memory)."""
        folder = user_cache_dir() / "calibrate" / digest if digest else None
        return cls(folder, total, progress)

    def value(self, name: str, measure: Callable[[], float]) -> float:
        """The stored float `name`, or `measure()` stored."""
        if name not in self.values:
            self.values[name] = float(measure())
            self.measured += 1
            if self.folder is not None:
                _write_atomic(self.folder / "values.json", json.dumps(self.values).encode())
        self._bar.update(1)
        return self.values[name]

    def arrays(
        self, name: str, measure: Callable[[], dict[str, np.ndarray]]
    ) -> dict[str, np.ndarray]:
        """The stored arrays `name`, or `measure()` stored."""
        path = self.folder / f"{name}.npz" if self.folder else None
        found = _read_arrays(path) if path else None
        if found is None:
            found = measure()
            self.measured += 1
            if path is not None:
                _write_arrays(path, found)
        self._bar.update(1)
        return found

    def close(self, finished: bool) -> None:
        """Close the bar; a finished run's results are no longer needed."""
        self._bar.close()
        if finished and self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


def _read_values(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}


def _read_arrays(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays in `path`, or None when it is missing or damaged (measured again)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def _write_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _write_atomic(path, buf.getvalue())


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` whole: a run killed mid-write leaves the previous file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
