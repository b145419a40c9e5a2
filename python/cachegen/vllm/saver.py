"""Saving off the forward path: a background thread encodes and uploads prompts' whole chunks.

The forward path only copies a finished prompt's KV out of vLLM's blocks (the blocks may be
reused once the request ends) and queues it. The saver starts a job when the engine is idle
between forward passes (or once a job has waited `MAX_DEFER_S`): on a CPU engine whose OpenMP
threads own every core, encoding during a forward pass would slow that pass many times over.
When the queue is full, because the store is slow or gone, a save is dropped: a missed save is
a future cache miss, never a stalled engine.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

#: Prompts waiting to be saved; each holds a copy of its KV, so this bounds memory.
QUEUE_DEPTH = 4
#: Longest a job waits for an idle engine before it is saved anyway.
MAX_DEFER_S = 10.0
_POLL_S = 0.02


@dataclass
class SaveJob:
    """One prompt's whole chunks: token ids and their KV (a `cachegen.paged.PagedKV`)."""

    request_id: str
    token_ids: list[int]
    kv: Any
    salt: str | None


class Saver:
    """Runs `save(job)` for queued jobs in one daemon thread, in order, each once `idle()`."""

    def __init__(
        self, save: Callable[[SaveJob], None], idle: Callable[[], bool] = lambda: True
    ) -> None:
        self._save = save
        self._idle = idle
        self._jobs: queue.Queue[SaveJob | None] = queue.Queue(QUEUE_DEPTH)
        self.saved = 0
        self.dropped = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="cachegen-vllm-save", daemon=True)
        self._thread.start()

    def submit(self, job: SaveJob) -> bool:
        """Queue `job`; False (and the job dropped) when the queue is full."""
        try:
            self._jobs.put_nowait(job)
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("cachegen: save queue full, not saving request %s", job.request_id)
            return False

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            deadline = time.monotonic() + MAX_DEFER_S
            while not self._idle() and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            try:
                self._save(job)
                self.saved += 1
            except Exception:  # noqa: BLE001 - a failed save is a future miss, logged
                self.failed += 1
                log.exception("cachegen: saving request %s failed", job.request_id)
            finally:
                self._jobs.task_done()

    def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for queued saves; True if all are done."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._jobs.join(), done.set()), daemon=True).start()
        return done.wait(timeout_s)

    def close(self, timeout_s: float) -> None:
        """Finish queued saves (up to `timeout_s`), then stop the thread."""
        self.flush(timeout_s)
        try:
            self._jobs.put_nowait(None)
        except queue.Full:
            pass  # the thread is stuck on a save: it is a daemon and dies with the process
