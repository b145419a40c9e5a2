"""Keeping secrets (passwords, keys) out of URLs, reprs and error messages."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
#: Query parameters whose values are never shown.
_SECRET_PARAMS = ("password", "secret", "token", "key")


def redact_url(url: str) -> str:
    """`url` with the password of its user info and the values of secret-like query
    parameters replaced by ``***``; a URL that does not parse is shown as ``***``."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError:
        return MASK
    netloc = parts.netloc
    if "@" in netloc:
        user, _, host = netloc.rpartition("@")
        name = user.partition(":")[0]
        netloc = f"{name}:{MASK}@{host}" if ":" in user else f"{MASK}@{host}"
    query = urlencode(
        [
            (k, MASK if any(s in k.lower() for s in _SECRET_PARAMS) else v)
            for k, v in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*:/",
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Redactor:
    """Masks a store's secrets in text it is about to show."""

    secrets: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def cause(self, error: BaseException) -> BaseException | None:
        """`error`, to chain to the error shown instead, unless its text holds a secret."""
        text = f"{error} {error!r}"
        return None if any(s in text for s in self.secrets) else error

    @classmethod
    def of(cls, *secrets: str | None) -> Redactor:
        """A redactor for the non-empty `secrets`, longest first (a secret may contain
        another)."""
        return cls(tuple(sorted({s for s in secrets if s}, key=len, reverse=True)))
