"""Garbage collection: remove the context objects that nothing can reach any more.

Manifests are the roots. An object is live if a manifest references it, if a chunk record a
manifest lists references it, or if a chunk record younger than the grace period references
it (a writer may be about to commit a manifest that lists that chunk; writers rewrite the
record of every chunk they reuse, so reuse makes a chunk young). Everything else under
``chunks/`` older than the grace period is garbage, as is a manifest that does not parse.
Only the context layout (``chunks/``, ``contexts/``) is touched: other data in the store stays.

The mark runs twice and only what both runs found dead is deleted, records before the blobs
they list, so that a writer committing during the collection keeps its chunks. A writer that
reuses an old chunk in the moment between the second mark and the delete can still lose it:
its context then misses that chunk (a `StoreError` for the loader), never loads wrong KV.
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


@dataclass
class GcReport:
    """What a collection found and removed (or, in a dry run, would remove)."""

    objects: int = 0
    live: int = 0
    #: Unreachable but younger than the grace period: kept for now.
    young: int = 0
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


def _mark(store: Store, grace_s: float) -> tuple[dict[str, ObjectInfo], set[str]]:
    """All context objects, and the keys of the live ones."""
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
        k for k in infos if k.endswith("/record.json") and (k in live or infos[k].age_s < grace_s)
    ]
    for key, body in _bodies(store, records).items():
        live.add(key)
        live.update(_refs(body.get("chunk")))
    return infos, live


def _dead(infos: dict[str, ObjectInfo], live: set[str], grace_s: float) -> set[str]:
    return {k for k, i in infos.items() if k not in live and i.age_s >= grace_s}


def collect_garbage(
    store: Store, *, grace_s: float = DEFAULT_GRACE_S, dry_run: bool = False
) -> GcReport:
    """Delete the context objects no manifest reaches that are older than `grace_s` seconds.

    `grace_s` must exceed the longest `save_context` call that may run meanwhile (see the
    module's docstring). With `dry_run`, only report what would be deleted.
    """
    if grace_s < 0:
        raise ValueError(f"grace_s must be >= 0, got {grace_s}")
    infos, live = _mark(store, grace_s)
    dead = _dead(infos, live, grace_s)
    report = GcReport(objects=len(infos), live=len(live & infos.keys()), dry_run=dry_run)
    report.young = len(infos) - report.live - len(dead)
    if dead and not dry_run:
        again, live_again = _mark(store, grace_s)
        dead &= _dead(again, live_again, grace_s)
    # Records first: once a chunk's record is gone no new writer reuses its blobs.
    for key in sorted(dead, key=lambda k: (not k.endswith("/record.json"), k)):
        if not dry_run:
            store.delete(key)
        report.deleted.append(key)
        report.bytes_freed += infos[key].size
    return report
