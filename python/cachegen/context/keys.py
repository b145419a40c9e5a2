"""Content addresses, object keys and sealed JSON for stored contexts.

A chunk's hash chains over the context: H(previous chunk hash, model id, tenant salt, chunk size,
this chunk's token ids). Equal prefixes therefore give equal chunk hashes, in any process and on
any machine, which is what lets a new context find the chunks it shares with a stored one. The
codec's version is not hashed: a format bump never turns a store into misses (blobs and manifests
record their version). The level is part of each blob's key, not of the chain.

A tenant salt makes the chain of the same tokens disjoint per tenant, so a tenant that reaches
the store only through cachegen cannot probe whether another tenant stored a prefix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cachegen.store.errors import ObjectCorrupted

from .auth import Authenticator

# blake2b personalizations: domain separation from every other use of blake2b.
_CHAIN_PERSON = b"cachegen-chain2"
_SALT_PERSON = b"cachegen-salt"
_LEGACY_PERSON = b"cachegen-chunk"
#: The codec version that the previous release's key chain hashed (see `legacy_chunk_hashes`).
LEGACY_CODEC_VERSION = 3
MANIFEST_SCHEMA = 1


def token_array(token_ids: Any) -> np.ndarray:
    """Token ids (list, numpy or torch, 1-D) as little-endian uint32, the hashed and stored form."""
    if hasattr(token_ids, "detach"):  # torch, possibly on a GPU
        token_ids = token_ids.detach().cpu().numpy()
    arr = np.asarray(token_ids)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"token_ids must be a non-empty 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"token_ids must be integers, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 0xFFFFFFFF:
        raise ValueError("token_ids must lie in [0, 2**32)")
    return arr.astype("<u4")


Salt = bytes | bytearray | memoryview | str | None


def salt_digest(salt: Salt) -> bytes:
    """The salt as hashed into the chain: empty for no salt, else a 32-byte digest of it."""
    if salt is None:
        return b""
    if isinstance(salt, str):
        salt = salt.encode()
    if not isinstance(salt, bytes | bytearray | memoryview):
        raise TypeError(f"salt must be bytes or str, not {type(salt).__name__}")
    salt = bytes(salt)
    return hashlib.blake2b(salt, digest_size=32, person=_SALT_PERSON).digest() if salt else b""


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(4, "little") + data


def _chain(person: bytes, header: bytes, tokens: np.ndarray, chunk_tokens: int) -> list[str]:
    if not 0 < chunk_tokens < 1 << 32:
        raise ValueError(f"chunk_tokens must be positive, got {chunk_tokens}")
    prev, out = bytes(32), []
    for start in range(0, len(tokens), chunk_tokens):
        h = hashlib.blake2b(prev, digest_size=32, person=person)
        h.update(header)
        h.update(tokens[start : start + chunk_tokens].tobytes())
        prev = h.digest()
        out.append(prev.hex())
    return out


def chunk_hashes(
    model_id: str, tokens: np.ndarray, chunk_tokens: int, salt: Salt = None
) -> list[str]:
    """Chained hex hashes of the token chunks ``[0, c), [c, 2c), ...`` of `tokens`.

    No salt and an empty salt are the same chain.
    """
    header = _field(model_id.encode()) + _field(salt_digest(salt))
    return _chain(_CHAIN_PERSON, header + chunk_tokens.to_bytes(4, "little"), tokens, chunk_tokens)


def legacy_chunk_hashes(model_id: str, tokens: np.ndarray, chunk_tokens: int) -> list[str]:
    """The previous release's chain (codec version 3 hashed, no salt), so its stores stay hits."""
    header = _field(model_id.encode()) + LEGACY_CODEC_VERSION.to_bytes(4, "little")
    return _chain(_LEGACY_PERSON, header, tokens, chunk_tokens)


def checksum(data: bytes | memoryview) -> str:
    """The checksum every stored object is verified against."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


# A two-hex-digit fan-out keeps directories of the file backend small.
def chunk_dir(chunk_hash: str) -> str:
    return f"chunks/{chunk_hash[:2]}/{chunk_hash}"


def record_key(chunk_hash: str) -> str:
    return f"{chunk_dir(chunk_hash)}/record.json"


def manifest_key(context_hash: str) -> str:
    return f"contexts/{context_hash[:2]}/{context_hash}.json"


def tombstone_key(chunk_hash: str) -> str:
    """Where garbage collection marks that it deleted the chunk's record (see context.gc)."""
    return f"{chunk_dir(chunk_hash)}/tombstone"


# Blob keys carry their checksum, so two writers whose encodings differ never overwrite each
# other's bytes: every record and manifest points at exactly the bytes it was written with.
def level_key(chunk_hash: str, level: int, digest: str) -> str:
    return f"{chunk_dir(chunk_hash)}/L{level}-{digest}.cg"


def tokens_key(chunk_hash: str, digest: str) -> str:
    return f"{chunk_dir(chunk_hash)}/tokens-{digest}.zst"


@dataclass(frozen=True)
class ObjectRef:
    """Where an object is and what its stored bytes must hash to."""

    key: str
    size: int
    blake2b: str
    #: Checks the object's MAC when the context is authenticated.
    auth: Authenticator | None = field(default=None, repr=False, compare=False)

    @classmethod
    def frame(cls, key: str, payload: bytes, auth: Authenticator | None) -> tuple[ObjectRef, bytes]:
        """The reference to `payload` stored under `key` and the bytes to store (MAC'd with
        `auth`, if given)."""
        stored = auth.sign(key, payload) if auth else payload
        return cls(key, len(stored), checksum(stored), auth), stored

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "size": self.size, "blake2b": self.blake2b}

    @classmethod
    def from_json(cls, d: dict[str, Any], auth: Authenticator | None) -> ObjectRef:
        return cls(str(d["key"]), int(d["size"]), str(d["blake2b"]), auth)

    def verify(self, data: bytes) -> bytes:
        """The payload of this object's stored bytes `data`; `ObjectCorrupted` if they are not
        its bytes, `ObjectUnauthenticated` if its MAC does not verify."""
        if len(data) != self.size:
            raise ObjectCorrupted(self.key, f"{len(data)} bytes, expected {self.size}")
        if checksum(data) != self.blake2b:
            raise ObjectCorrupted(self.key, "checksum mismatch")
        return self.auth.verify(self.key, data) if self.auth else data


def _canonical(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def seal(key: str, body: dict[str, Any], auth: Authenticator | None = None) -> bytes:
    """JSON with a checksum over the body's canonical form (JSON, never pickle), MAC'd with
    `auth` for the store key `key`, if given."""
    raw = json.dumps({"blake2b": checksum(_canonical(body)), "body": body}, indent=1).encode()
    return auth.sign(key, raw) if auth else raw


def unseal(key: str, raw: bytes, auth: Authenticator | None = None) -> dict[str, Any]:
    """The body of a sealed JSON object; `ObjectCorrupted` if it does not parse or verify,
    `ObjectUnauthenticated` if `auth` is given and its MAC does not verify."""
    if auth is not None:
        raw = auth.verify(key, raw)
    try:
        outer = json.loads(raw)
        body, digest = outer["body"], outer["blake2b"]
    except (ValueError, TypeError, KeyError) as e:
        raise ObjectCorrupted(key, f"not sealed JSON ({e})") from e
    if not isinstance(body, dict) or checksum(_canonical(body)) != digest:
        raise ObjectCorrupted(key, "checksum mismatch")
    return body
