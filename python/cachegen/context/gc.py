"""Garbage collection: remove the context objects that nothing can reach any more.

Manifests are the roots. An object is live if a manifest references it, if a chunk record a
manifest lists references it, or if a chunk record younger than the grace period references
it (a writer may be about to commit a manifest that lists that chunk). Everything else under
``chunks/`` older than the grace period is dead, as is a manifest that does not parse. Only the
context layout (``chunks/``, ``contexts/``) is touched: other data in the store stays.

Deleting is safe against concurrent writers that each finish within the grace period. A writer
reuses a chunk only through its record, and rewrites that record (making it young). A dead
record is deleted first, and a tombstone beside it records when; the chunk's blobs go only once
the tombstone (or, while a record exists, the record) is older than the grace period: any
writer that read the record before it went has committed its manifest by then, and the
collector's mark sees it. So blobs of a chunk whose record went leave one run of the collector
after the grace period, not in the run that deleted the record (with ``grace_s=0``, in the same
run). One narrow race remains, because blob keys are content addresses: a writer that encodes
such a chunk anew (its record long gone) may re-put a blob in the instant the collector deletes
that same key; its context then misses that chunk (`ObjectMissing`), never loads wrong KV.
MACs are not checked (no key is needed): a forged manifest can only keep objects alive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from cachegen.store.base import ObjectInfo, Store
from cachegen.store.errors import ObjectCorrupted

from .auth import unframed
from .keys import record_key, unseal

DEFAULT_GRACE_S = 3600.0
_ROOTS = ("contexts/", "chunks/")
_RECORD, _TOMBSTONE = "record.json", "tombstone"


@dataclass
class GcReport:
    """What a collection found and removed (or, in a dry run, would remove)."""

    objects: int = 0
    live: int = 0
    #: Unreachable but kept for now: younger than the grace period, or a blob whose chunk's
    #: record went (or changed) less than the grace period ago.
    waiting: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    dry_run: bool = False


def _bodies(store: Store, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The bodies of the sealed objects under `keys`, MAC'd or not (fetched `concurrency` at
    a time); those gone or not parsing are left out."""
    keys = sorted(keys)
    bodies = {}
    for key, raw in zip(keys, store.get_many(keys, missing_ok=True), strict=True):
        try:
            if raw is not None:
                bodies[key] = unseal(key, unframed(raw))
        except ObjectCorrupted:
            continue
    return bodies


def _refs(chunk: object) -> Iterable[str]:
    """The keys a chunk entry (from a manifest or a record) references."""
    if not isinstance(chunk, dict):
        return
    tokens, levels = chunk.get("tokens"), chunk.get("levels")
    if isinstance(tokens, dict) and isinstance(tokens.get("key"), str):
        yield tokens["key"]
    for ref in levels.values() if isinstance(levels, dict) else ():
        if isinstance(ref, dict) and isinstance(ref.get("key"), str):
            yield ref["key"]
    if isinstance(chunk.get("hash"), str):
        yield record_key(chunk["hash"])


def _chunk_of(key: str) -> str | None:
    """The chunk directory (``chunks/ab/<hash>``) holding `key`, if it is in one."""
    parts = key.split("/")
    return "/".join(parts[:3]) if parts[0] == "chunks" and len(parts) == 4 else None


@dataclass
class _Mark:
    """One pass over the store: every context object, and which are live and dead."""

    infos: dict[str, ObjectInfo]
    live: set[str]
    dead: set[str]


def _mark(store: Store, grace_s: float) -> _Mark:
    infos = {i.key: i for root in _ROOTS for i in store.scan(root)}
    live: set[str] = set()
    # Manifests that parse are live; a damaged one is garbage once it is old.
    for key, body in _bodies(store, (k for k in infos if k.startswith("contexts/"))).items():
        live.add(key)
        chunks = body.get("chunks")
        for chunk in chunks if isinstance(chunks, list) else []:
            live.update(_refs(chunk))
    # Records that a manifest lists, and young ones a writer may be about to commit.
    records = [
        k for k in infos if k.endswith(f"/{_RECORD}") and (k in live or infos[k].age_s < grace_s)
    ]
    for key, body in _bodies(store, records).items():
        live.add(key)
        live.update(_refs(body.get("chunk")))
    dead = {
        k
        for k, info in infos.items()
        if k not in live and info.age_s >= grace_s and not k.endswith(f"/{_TOMBSTONE}")
    }
    return _Mark(infos, live, dead)


def _settled(chunk: str | None, mark: _Mark, grace_s: float, fresh: set[str]) -> bool:
    """Whether dead objects of `chunk` may go: no writer can still be committing a context
    that uses them (see the module docstring). `fresh`: chunks whose record this run deletes."""
    if chunk is None:
        return True  # a damaged manifest
    if chunk in fresh:
        return grace_s == 0
    record = mark.infos.get(f"{chunk}/{_RECORD}")
    marker = record or mark.infos.get(f"{chunk}/{_TOMBSTONE}")
    return marker is not None and marker.age_s >= grace_s


def collect_garbage(
    store: Store, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False
) -> GcReport:
    """Delete the context objects no manifest reaches that are older than `grace_s` seconds.

    `grace_s` must exceed the longest `save_context` call that may run meanwhile. With
    `dry_run`, only report what this run would delete.
    """
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    mark = _mark(store, grace_s)
    report = GcReport(len(mark.infos), len(mark.live & mark.infos.keys()), dry_run=dry_run)
    sizes = {k: info.size for k, info in mark.infos.items()}
    if mark.dead and not dry_run:
        again = _mark(store, grace_s)  # what a writer committed meanwhile is not dead
        mark = _Mark(again.infos, again.live, mark.dead & again.dead)
    records = {k for k in mark.dead if k.endswith(f"/{_RECORD}")}
    fresh = {_chunk_of(k) for k in records}
    others = mark.dead - records
    if not dry_run:
        _bury(store, mark, records, others)
        if grace_s == 0 and records:
            # The tombstones just written are old enough: settle their chunks in this run.
            again = _mark(store, grace_s)
            others &= again.dead
            mark, fresh = again, set()
    settled = sorted(k for k in others if _settled(_chunk_of(k), mark, grace_s, fresh))
    report.waiting = len(others) - len(settled)
    for key in settled:
        if not dry_run:
            store.delete(key)
    report.deleted = sorted(records) + settled
    report.bytes_freed = sum(sizes.get(k, 0) for k in report.deleted)
    if not dry_run:
        _sweep_tombstones(store)
    return report


def _bury(store: Store, mark: _Mark, records: set[str], others: set[str]) -> None:
    """Delete dead records, each after a tombstone; give a tombstone to every chunk with dead
    objects and no record or tombstone, so that a later run can settle it."""
    chunks = {_chunk_of(k) for k in others} - {None}
    for chunk in sorted(chunks):
        if f"{chunk}/{_RECORD}" not in mark.infos and f"{chunk}/{_TOMBSTONE}" not in mark.infos:
            store.put(f"{chunk}/{_TOMBSTONE}", b"")
    for key in sorted(records):
        store.put(f"{_chunk_of(key)}/{_TOMBSTONE}", b"")  # rewritten: its age restarts
        store.delete(key)


def _sweep_tombstones(store: Store) -> None:
    """Remove tombstones no longer needed: their chunk has a record again, or nothing else."""
    by_chunk: dict[str, list[str]] = {}
    for info in store.scan("chunks/"):
        chunk = _chunk_of(info.key)
        if chunk is not None:
            by_chunk.setdefault(chunk, []).append(info.key.rpartition("/")[2])
    for chunk, names in by_chunk.items():
        if _TOMBSTONE in names and (names == [_TOMBSTONE] or _RECORD in names):
            store.delete(f"{chunk}/{_TOMBSTONE}")
