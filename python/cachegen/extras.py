"""Which optional extra installs a missing module, so a command without it says so in one line.

The core install (`pip install cachegen`) needs only numpy: the codec, the file and memory
stores (the default store included) and `cachegen inspect`. The rest comes with extras.
"""

from __future__ import annotations

#: Top-level module -> the extra of pyproject.toml that installs it.
EXTRA_OF: dict[str, str] = {
    "torch": "hf",
    "transformers": "hf",
    "tqdm": "hf",
    "gguf": "hf",
    "accelerate": "hf",
    "obstore": "store",
    "redis": "store",
    "zstandard": "store",
    "platformdirs": "store",
    "matplotlib": "bench",
}


def missing_extra(err: ModuleNotFoundError, needs: str = "") -> str | None:
    """One line naming what to install for `err`, or None when the module is not an extra's.

    `needs` is every extra the failing command uses (e.g. "hf,store"), so one install is enough;
    without it, the missing module's own extra is named."""
    module = (err.name or "").split(".")[0]
    extra = EXTRA_OF.get(module)
    if extra is None:
        return None
    return f"{module} is not installed: pip install 'cachegen[{needs or extra}]'"
