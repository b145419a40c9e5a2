"""Keyed MACs of stored objects (opt-in authenticated KV).

With a deployment's or tenant's key, every object a context writes (chunk blobs, token ids,
chunk records, manifests) ends with a trailer: a magic tag and HMAC-SHA256 over the object's
store key and its bytes. The trailer is this layer's framing, not part of the codec's wire
format. A reader with the key accepts only objects whose MAC verifies, so a writer without the
key cannot make it use its KV, however well-formed its bytes; binding the store key means a
valid object copied to another key does not verify there either.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

from cachegen.store.errors import ObjectUnauthenticated

_MAGIC = b"cgmac-v1"
_TAG = hashlib.sha256().digest_size
TRAILER = len(_MAGIC) + _TAG
#: Shortest key accepted: a MAC is no stronger than its key.
MIN_KEY_BYTES = 16

AuthKey = bytes | bytearray | memoryview | str | None


@dataclass(frozen=True)
class Authenticator:
    """Signs and verifies objects with one secret key (never shown in reprs or errors)."""

    key: bytes = field(repr=False)

    @classmethod
    def of(cls, auth_key: AuthKey) -> Authenticator | None:
        """The authenticator for `auth_key` (bytes, or str as UTF-8), None for no key."""
        if auth_key is None:
            return None
        if isinstance(auth_key, str):
            auth_key = auth_key.encode()
        if not isinstance(auth_key, bytes | bytearray | memoryview):
            raise TypeError(f"auth_key must be bytes or str, not {type(auth_key).__name__}")
        if len(auth_key) < MIN_KEY_BYTES:
            raise ValueError(f"auth_key must hold at least {MIN_KEY_BYTES} bytes")
        return cls(bytes(auth_key))

    def _tag(self, object_key: str, payload: bytes | memoryview) -> bytes:
        name = object_key.encode()
        mac = hmac.new(self.key, len(name).to_bytes(4, "little") + name, hashlib.sha256)
        mac.update(payload)
        return mac.digest()

    def sign(self, object_key: str, payload: bytes) -> bytes:
        """`payload` framed with its MAC, ready to store under `object_key`."""
        return payload + _MAGIC + self._tag(object_key, payload)

    def verify(self, object_key: str, stored: bytes) -> bytes:
        """The payload of a framed object; `ObjectUnauthenticated` unless its MAC verifies."""
        if len(stored) < TRAILER or stored[-TRAILER:-_TAG] != _MAGIC:
            raise ObjectUnauthenticated(object_key, "no MAC")
        payload = memoryview(stored)[:-TRAILER]
        if not hmac.compare_digest(self._tag(object_key, payload), stored[-_TAG:]):
            raise ObjectUnauthenticated(object_key, "MAC does not verify under this key")
        return bytes(payload)


def unframed(stored: bytes) -> bytes:
    """The payload of an object whether or not it carries a MAC trailer, NOT verified: for
    tools that only need an object's references (garbage collection), never for KV."""
    if len(stored) >= TRAILER and stored[-TRAILER:-_TAG] == _MAGIC:
        return stored[:-TRAILER]
    return stored
