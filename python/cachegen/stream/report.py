"""What a load did, chunk by chunk: the report object every load returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .planner import Choice


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
    #: Why `choice` differs from `planned` (the store or decode error), else "".
    fallback: str = ""


@dataclass
class LoadReport:
    """A whole load: per-chunk rows and totals."""

    slo_s: float
    chunks: list[ChunkReport] = field(default_factory=list)
    #: Seconds from the start of the load until the engine's cache was complete.
    total_s: float = 0.0
    #: Why the stored context could not be used at all (all text), else "".
    context_error: str = ""

    @property
    def nbytes(self) -> int:
        """Bytes moved over the link."""
        return sum(c.nbytes for c in self.chunks)

    @property
    def met_slo(self) -> bool:
        """Whether the load ended within the SLO."""
        return self.total_s <= self.slo_s

    @property
    def choices(self) -> list[Choice]:
        """What each chunk was loaded as, in order."""
        return [c.choice for c in self.chunks]

    @property
    def fallbacks(self) -> int:
        """Chunks that fell back to text after a store or decode error."""
        return sum(1 for c in self.chunks if c.fallback)

    def to_json(self) -> dict[str, Any]:
        """A JSON-serializable dict of the report, totals included."""
        return {
            "slo_s": self.slo_s,
            "total_s": self.total_s,
            "met_slo": self.met_slo,
            "nbytes": self.nbytes,
            "fallbacks": self.fallbacks,
            "context_error": self.context_error,
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
        rows.append(
            f"total {self.total_s * 1e3:.1f} ms (SLO {self.slo_s * 1e3:.0f} ms, "
            f"{'met' if self.met_slo else 'missed'}), {self.nbytes} bytes, "
            f"{self.fallbacks} fallback(s) to text"
        )
        return "\n".join(rows)
