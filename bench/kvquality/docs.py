"""Evaluation documents: real English texts every Debian machine ships."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")

# Long enough for a 1536-token prefix plus a 257-token continuation, and of different kinds:
# a strong copyleft, a permissive licence with a patent grant, a file-level copyleft and a
# licence for documentation rather than code.
DEFAULT_DOCS = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3")


@dataclass(frozen=True)
class Document:
    """A named text."""

    name: str
    text: str


def load_document(name: str) -> Document:
    """Read a document by name from ``/usr/share/common-licenses``, or by file path."""
    path = Path(name) if "/" in name else LICENSES / name
    return Document(name=path.name, text=path.read_text(encoding="utf-8"))


def load_documents(names: tuple[str, ...] = DEFAULT_DOCS) -> list[Document]:
    """Read several documents (see ``load_document``)."""
    return [load_document(n) for n in names]
