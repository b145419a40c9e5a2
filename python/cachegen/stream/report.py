"""What a load did, chunk by chunk: the report object every load returns."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from .planner import Choice

#: Why a chunk planned as stored KV was not loaded (`ChunkReport.cause`).
CAUSES = ("timeout", "missing", "corrupt", "unavailable", "decode")


@dataclass
class ChunkReport:
    """One chunk of a load. Times are seconds since the load started."""

    index: int
    tokens: int
    #: What was loaded: a level, or "text" (recomputed by the engine).
    choice: Choice
    #: What the planner chose, when it differs from `choice` (a fallback to text).
    planned: Choice
    #: Bytes fetched for this chunk (0 for text).
    nbytes: int
    fetch_start: float
    fetch_end: float
    compute_end: float = 0.0
    #: Seconds spent decoding the blob or recomputing the text.
    compute_s: float = 0.0
    #: The bandwidth estimate (bytes/s) the choice was made with; None while unknown.
    bandwidth_bps: float | None = None
    #: The planner's predicted end of the load when it chose this chunk.
    predicted_finish: float = 0.0
    #: Predicted seconds of this chunk's fetch and compute, for attributing a miss.
    predicted_fetch_s: float = 0.0
    predicted_compute_s: float = 0.0
    #: Why `choice` differs from `planned` (the store or decode error), else "".
    fallback: str = ""
    #: The fallback's class: one of `CAUSES`, else "".
    cause: str = ""
    #: Fetched to measure the link against a plan that fetched nothing (`with_probe`).
    probe: bool = False


@dataclass
class LoadReport:
    """A whole load: per-chunk rows and totals.

    For a "prefix" engine the rows are the chunks the loader handled: the loaded prefix, and
    the chunk that ended it when it failed; the engine recomputes the rest after the load.
    """

    slo_s: float
    chunks: list[ChunkReport] = field(default_factory=list)
    #: Seconds from the start of the load until the loader's part was complete.
    total_s: float = 0.0
    #: Why the stored context could not be used at all (all text), else "".
    context_error: str = ""
    #: The class of `context_error` (one of `CAUSES`), else "".
    context_cause: str = ""
    #: Seconds spent opening the stored context (manifest and records).
    open_s: float = 0.0
    #: Tokens of the context asked for.
    total_tokens: int = 0
    #: Tokens loaded as stored KV.
    loaded_tokens: int = 0
    #: "prefix" engines: why the loaded prefix ends where it does: "complete", "planned"
    #: (the planner chose to recompute the rest), "not stored", or a cause in `CAUSES`.
    prefix_end: str = ""
    #: "prefix" engines: predicted seconds the engine takes after the load to recompute the
    #: tokens past the prefix (part of the time to first token).
    recompute_after_s: float = 0.0
    #: Reads that ran late and were sent again on fresh connections.
    hedged_reads: int = 0
    #: Whether the first plan made with a bandwidth estimate met the SLO.
    planned_feasible: bool = True

    @property
    def ttft_s(self) -> float:
        """The load's part of the time to first token: loading, plus the engine's recompute
        of the suffix for a "prefix" engine."""
        return self.total_s + self.recompute_after_s

    @property
    def nbytes(self) -> int:
        """Bytes moved over the link."""
        return sum(c.nbytes for c in self.chunks)

    @property
    def met_slo(self) -> bool:
        """Whether the load ended within the SLO."""
        return self.ttft_s <= self.slo_s

    @property
    def choices(self) -> list[Choice]:
        """What each chunk was loaded as, in order."""
        return [c.choice for c in self.chunks]

    @property
    def fallbacks(self) -> int:
        """Chunks not loaded as planned after a store or decode error."""
        return sum(1 for c in self.chunks if c.fallback)

    @property
    def fallback_causes(self) -> dict[str, int]:
        """Fallbacks by cause (the context's own, if it failed, counts once)."""
        counts = Counter(c.cause for c in self.chunks if c.cause)
        if self.context_cause:
            counts[self.context_cause] += 1
        return dict(counts)

    @property
    def slo_miss(self) -> str:
        """Why the SLO was missed ("" when met): the part of the load that overran most."""
        if self.met_slo:
            return ""
        if not self.planned_feasible:
            return "infeasible: no plan met the SLO at the start"
        if self.context_cause:
            return f"context: {self.context_cause} after {self.open_s:.3f} s"
        causes = self.fallback_causes
        if causes:
            return "fallbacks: " + ", ".join(f"{n} {c}" for c, n in sorted(causes.items()))
        net = sum(c.fetch_end - c.fetch_start - c.predicted_fetch_s for c in self.chunks)
        cpu = sum(c.compute_s - c.predicted_compute_s for c in self.chunks)
        if max(net, cpu) <= 0:
            return "queueing: fetch and compute each within their predictions"
        side = "network" if net >= cpu else "compute"
        return f"{side}: {max(net, cpu):.3f} s over the prediction"

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of the report, totals included."""
        return {
            "slo_s": self.slo_s,
            "total_s": self.total_s,
            "ttft_s": self.ttft_s,
            "met_slo": self.met_slo,
            "slo_miss": self.slo_miss,
            "nbytes": self.nbytes,
            "fallbacks": self.fallbacks,
            "fallback_causes": self.fallback_causes,
            "context_error": self.context_error,
            "open_s": self.open_s,
            "hedged_reads": self.hedged_reads,
            "total_tokens": self.total_tokens,
            "loaded_tokens": self.loaded_tokens,
            "prefix_end": self.prefix_end,
            "recompute_after_s": self.recompute_after_s,
            "chunks": [asdict(c) for c in self.chunks],
        }

    def table(self) -> str:
        """A plain-text table, one row per chunk, then the totals."""
        rows = [" chunk  choice      bytes  fetch ms  compute ms  done ms  est Mbit/s"]
        for c in self.chunks:
            est = f"{c.bandwidth_bps * 8e-6:10.1f}" if c.bandwidth_bps else f"{'-':>10}"
            choice = f"{c.choice}{'*' if c.fallback else ''}"
            rows.append(
                f"{c.index:6d}  {choice!s:>6} {c.nbytes:10d} "
                f"{(c.fetch_end - c.fetch_start) * 1e3:9.1f} {c.compute_s * 1e3:11.1f} "
                f"{c.compute_end * 1e3:8.1f}  {est}"
            )
        causes = ", ".join(f"{n} {c}" for c, n in sorted(self.fallback_causes.items()))
        rows.append(
            f"total {self.ttft_s * 1e3:.1f} ms (SLO {self.slo_s * 1e3:.0f} ms, "
            f"{'met' if self.met_slo else 'missed: ' + self.slo_miss}), {self.nbytes} bytes, "
            f"{self.fallbacks} fallback(s) to text" + (f" ({causes})" if causes else "")
        )
        if self.prefix_end:
            rows.append(
                f"prefix: {self.loaded_tokens} of {self.total_tokens} tokens loaded "
                f"({self.prefix_end}); the engine recomputes the rest "
                f"(~{self.recompute_after_s * 1e3:.0f} ms)"
            )
        return "\n".join(rows)
