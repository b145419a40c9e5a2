"""Evaluation documents: real English texts every Debian machine ships."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

LICENSES = Path("/usr/share/common-licenses")

# Long enough for a 1536-token prefix plus a 257-token continuation, and of different kinds:
# a strong copyleft, a permissive licence with a patent grant, a file-level copyleft, a licence
# for documentation rather than code, and program source (Python's own argparse module).
DEFAULT_DOCS = ("GPL-3", "Apache-2.0", "MPL-2.0", "GFDL-1.3", "python:argparse")
# Text that calibration (bench/smollm2_profile.py) uses and the benchmark never scores.
CALIBRATION_DOCS = (
    "GPL-2",
    "LGPL-2.1",
    "python:difflib",
    "GPL-1",
    "python:typing",
    "python:pathlib",
)


@dataclass(frozen=True)
class Document:
    """A named text."""

    name: str
    text: str


def load_document(name: str) -> Document:
    """Read a document: a name in ``/usr/share/common-licenses``, ``python:MODULE`` (the source
    of a standard-library module), or a file path."""
    if name.startswith("python:"):
        module = importlib.import_module(name.removeprefix("python:"))
        return Document(name=name, text=Path(module.__file__).read_text(encoding="utf-8"))
    path = Path(name) if "/" in name else LICENSES / name
    return Document(name=path.name, text=path.read_text(encoding="utf-8"))


def load_documents(names: tuple[str, ...] = DEFAULT_DOCS) -> list[Document]:
    """Read several documents (see ``load_document``)."""
    return [load_document(n) for n in names]
