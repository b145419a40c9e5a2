"""A TCP proxy in front of a server that can go silent: the S3 stall of a real link, made
deterministic. A silenced connection is accepted, stays open and swallows what the client
sends, and nothing comes back: what a server that leaves a request unanswered, or a connection
dropped by a middlebox, looks like to the client. (moto answers every request on a new
connection, so the Nth connection is the Nth request.)"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class _Pair:
    client: socket.socket
    upstream: socket.socket
    silent: bool = False


@dataclass
class StallProxy:
    """Forwards 127.0.0.1:`port` to `target`; `silence_next` / `silence_all` stall it."""

    target: tuple[str, int]
    port: int = 0
    _pairs: list[_Pair] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _silence_new: bool = False
    _silent_at: set[int] = field(default_factory=set)
    _closed: bool = False

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def silence_next(self, *nth: int) -> None:
        """The `nth` (1 = the next) connections from now on are never answered."""
        with self._lock:
            self._silent_at |= {len(self._pairs) + n - 1 for n in nth}

    def silence_all(self) -> None:
        """No connection answers any more, open or new."""
        with self._lock:
            self._silence_new = True
            for pair in self._pairs:
                pair.silent = True

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for pair in self._pairs:
                for s in (pair.client, pair.upstream):
                    s.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:  # the upstream went first (a test's teardown): drop the client
                client.close()
                continue
            with self._lock:
                silent = self._silence_new or len(self._pairs) in self._silent_at
                pair = _Pair(client, upstream, silent)
                self._pairs.append(pair)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(pair, src, dst), daemon=True).start()

    @staticmethod
    def _pump(pair: _Pair, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                if not pair.silent:
                    dst.sendall(data)
        except OSError:
            pass
