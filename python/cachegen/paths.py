"""Where cachegen keeps files of its own: the default store, the LRU copies, cost calibrations.

`platformdirs` gives each platform's user cache directory when it is installed (the `store`
extra); without it the XDG rule applies, so the embedded default store works with the core
install alone. `CACHEGEN_CACHE_DIR` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """cachegen's folder under the user's cache directory."""
    override = os.environ.get("CACHEGEN_CACHE_DIR")
    if override:
        return Path(override)
    try:
        import platformdirs
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "cachegen"
    return Path(platformdirs.user_cache_dir("cachegen"))
