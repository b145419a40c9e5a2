"""`s3://bucket/prefix`: S3-protocol object storage through `obstore`.

Large objects go up as multipart uploads and come down as parallel range gets, both
`concurrency` requests wide, so one big blob can use several connections at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import obstore
from obstore.exceptions import BaseError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store as _ObS3Store

from .base import Buffer, ObjectInfo, Store
from .errors import ObjectMissing, StoreConfigError, StoreUnavailable
from .redact import Redactor, redact_url

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
MiB = 1 << 20


@dataclass(frozen=True)
class S3Options:
    """Connection settings; each may also come from the URL query string, except secrets
    (which reprs never show)."""

    endpoint: str | None = None
    region: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    #: Unsigned requests, for public buckets.
    anonymous: bool = False
    #: Requests in flight for one multipart put or one ranged get, and for batched calls.
    concurrency: int = 8
    #: Multipart part size and range-get slice size, in bytes.
    part_size: int = 8 * MiB
    #: Seconds one HTTP request may take before it is retried.
    timeout: float = 60.0
    #: Seconds to establish a connection.
    connect_timeout: float = 10.0
    max_retries: int = 3
    #: PEM file of CA certificates to trust for an https endpoint, besides the system's
    #: (certificates are always verified).
    ca_file: str | None = None

    def credentials(self) -> dict[str, str]:
        """Keys from the options, else from the AWS environment variables; raise if none."""
        env = os.environ
        key = self.access_key_id or env.get("AWS_ACCESS_KEY_ID")
        secret = self.secret_access_key or env.get("AWS_SECRET_ACCESS_KEY")
        token = self.session_token or env.get("AWS_SESSION_TOKEN")
        if self.anonymous:
            return {"skip_signature": True}
        if not key or not secret:
            raise StoreConfigError(
                "no S3 credentials: pass access_key_id= and secret_access_key= to "
                "cachegen.store.open, set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or pass anonymous=True for a public bucket"
            )
        creds = {"access_key_id": key, "secret_access_key": secret}
        return creds | ({"session_token": token} if token else {})


def _read_ca(path: str) -> bytes:
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise StoreConfigError(f"cannot read the S3 CA file {path!r}: {e.strerror}") from e
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise StoreConfigError(f"the S3 CA file {path!r} holds no PEM certificate")
    return pem


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class S3Store(Store):
    """A bucket, or a prefix inside one, on AWS S3 or any S3-compatible server."""

    def __init__(self, bucket: str, prefix: str = "", options: S3Options | None = None) -> None:
        opts = options or S3Options()
        if not _BUCKET.fullmatch(bucket):
            raise StoreConfigError(
                f"invalid S3 bucket name {bucket!r}: 3-63 characters of a-z, 0-9, '.' and '-'"
            )
        endpoint = (
            opts.endpoint
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
        )
        if endpoint is not None and not re.match(r"https?://[^/]+", endpoint):
            raise StoreConfigError(
                f"S3 endpoint must be an http(s):// URL, got {redact_url(endpoint)!r}"
            )
        if min(opts.timeout, opts.connect_timeout) <= 0:
            raise StoreConfigError("S3 timeouts must be positive")
        region = (
            opts.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self._options = opts
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        shown = redact_url(endpoint) if endpoint else None
        self.url = f"s3://{bucket}/{self.prefix}" + (f"?endpoint={shown}" if shown else "")
        self.concurrency = opts.concurrency
        self.part_size = opts.part_size
        self._endpoint = shown or "AWS"
        creds = opts.credentials()
        self._redact = Redactor.of(*(v for v in creds.values() if isinstance(v, str)))
        config = creds | {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        client: dict[str, object] = {
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "timeout": timedelta(seconds=opts.timeout),
            "connect_timeout": timedelta(seconds=opts.connect_timeout),
        }
        if opts.ca_file is not None:
            client["root_certificate"] = _read_ca(opts.ca_file)
        self._s3 = _ObS3Store(
            bucket,
            prefix=self.prefix or None,
            client_options=client,
            retry_config={
                "max_retries": opts.max_retries,
                "retry_timeout": timedelta(seconds=opts.timeout * (opts.max_retries + 1)),
                "backoff": {
                    "init_backoff": timedelta(milliseconds=100),
                    "max_backoff": timedelta(seconds=2),
                    "base": 2,
                },
            },
            **config,
        )
        self._parts = ThreadPoolExecutor(opts.concurrency, thread_name_prefix="cachegen-s3-range")

    @contextmanager
    def _errors(self, op: str, key: str) -> Iterator[None]:
        """Map obstore's errors to the store's typed errors, keeping the first message line."""
        try:
            yield
        except FileNotFoundError as e:
            if "NoSuchBucket" in str(e):
                raise StoreConfigError(f"S3 bucket {self.bucket!r} does not exist") from e
            raise ObjectMissing(key) from e
        except (PermissionDeniedError, UnauthenticatedError) as e:
            msg = f"S3 {op} {key!r} refused: {_first_line(e)}"
            raise StoreConfigError(self._redact(msg)) from self._redact.cause(e)
        except (BaseError, OSError) as e:
            msg = f"S3 {op} {key!r} at {self._endpoint} failed: {_first_line(e)}"
            raise StoreUnavailable(self._redact(msg)) from self._redact.cause(e)

    def _put(self, key: str, data: Buffer) -> None:
        # S3 makes an object visible only when its single put or its multipart upload completes.
        with self._errors("put", key):
            obstore.put(
                self._s3, key, data, chunk_size=self.part_size, max_concurrency=self.concurrency
            )

    def _get(self, key: str) -> bytes:
        with self._errors("get", key):
            try:
                first = obstore.get(self._s3, key, options={"range": (0, self.part_size)})
            except BaseError as e:
                if "416" not in str(e):
                    raise
                return bytes(obstore.get(self._s3, key).bytes())  # empty object
            size = first.meta["size"]
            head = first.bytes()
            if size <= len(head):
                return bytes(head)

            def fetch(start: int) -> obstore.Bytes:
                return obstore.get_range(
                    self._s3, key, start=start, end=min(start + self.part_size, size)
                )

            return b"".join([head, *self._parts.map(fetch, range(len(head), size, self.part_size))])

    def _get_range(self, key: str, start: int, end: int) -> bytes:
        with self._errors("get_range", key):
            try:
                return bytes(obstore.get_range(self._s3, key, start=start, end=end))
            except BaseError as e:
                if "416" not in str(e):
                    raise
                return b""  # S3 answers 416 for a range past the end; the base raises for it

    def _exists(self, key: str) -> bool:
        with self._errors("head", key):
            try:
                obstore.head(self._s3, key)
            except FileNotFoundError:
                return False
            return True

    def _delete(self, key: str) -> None:
        with self._errors("delete", key):
            obstore.delete(self._s3, key)

    def _list(self, prefix: str) -> list[str]:
        # obstore lists whole path segments, so list the prefix's directory and filter.
        directory = prefix.rpartition("/")[0]
        with self._errors("list", prefix):
            return [
                meta["path"]
                for batch in obstore.list(self._s3, prefix=directory or None)
                for meta in batch
                if meta["path"].startswith(prefix)
            ]

    def fresh(self) -> S3Store:
        """A new client: its connection pool shares nothing with this one's."""
        return S3Store(self.bucket, self.prefix, self._options)

    def _scan(self, prefix: str) -> list[ObjectInfo]:
        directory = prefix.rpartition("/")[0]
        now = datetime.now(timezone.utc)
        with self._errors("list", prefix):
            return [
                ObjectInfo(
                    meta["path"],
                    meta["size"],
                    max((now - meta["last_modified"]).total_seconds(), 0.0),
                )
                for batch in obstore.list(self._s3, prefix=directory or None)
                for meta in batch
                if meta["path"].startswith(prefix)
            ]

    def close(self) -> None:
        self._parts.shutdown(wait=False)
        super().close()
