"""The committed golden blobs of every format version decode to the committed digests, so no
version can change by accident; the encoder reproduces the current version's byte for byte."""

from __future__ import annotations

import json

import pytest
from golden import DATA, blob_name, cases, digest

import cachegen

MANIFEST = json.loads((DATA / "golden.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_blob_decodes(name):
    blob = (DATA / f"{name}.cgkv").read_bytes()
    assert cachegen.inspect(blob).version == MANIFEST[name]["version"]
    assert digest(cachegen.decode(blob, framework="numpy")) == MANIFEST[name]["decoded_sha256"]


def test_every_version_has_golden_blobs():
    versions = {m["version"] for m in MANIFEST.values()}
    assert versions == set(range(1, cachegen.FORMAT_VERSION + 1))


@pytest.mark.parametrize("case", sorted(cases()))
def test_encoder_reproduces_golden_bytes(case):
    kv, config = cases()[case]
    assert cachegen.encode(kv, config=config) == (DATA / f"{blob_name(case)}.cgkv").read_bytes()
