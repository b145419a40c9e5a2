"""Typed errors of the storage layer.

Every failure a loader may see is a `StoreError`, so ``except StoreError`` is enough to treat
any storage problem as a cache miss and fall back to recomputing from text.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every storage error."""


class StoreConfigError(StoreError, ValueError):
    """A bad URL, unknown option or missing credentials: fix the call, retrying won't help."""


class InvalidKey(StoreError, ValueError):
    """A key or list prefix outside the portable alphabet (see `cachegen.store.base.check_key`)."""


class StoreUnavailable(StoreError):
    """The backend could not be reached or failed the request (network, server, disk)."""


class ObjectMissing(StoreError, LookupError):
    """No object is stored under the key."""

    def __init__(self, key: str, detail: str = "") -> None:
        super().__init__(f"object {key!r} not found" + (f": {detail}" if detail else ""))
        self.key = key


class ObjectCorrupted(StoreError):
    """An object exists but its bytes fail their checksum, are truncated or do not parse."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"object {key!r} is corrupted: {detail}")
        self.key = key


class ObjectUnauthenticated(ObjectCorrupted):
    """An object lacks a MAC that verifies under the reader's key: not to be trusted."""


class ContextMissing(ObjectMissing):
    """No stored chunk matches the start of the requested context."""
