"""The committed golden blobs decode to the committed digests, so wire format v1 cannot change
by accident; the encoder still reproduces them byte for byte."""

from __future__ import annotations

import json

import pytest

import cachegen
from golden import DATA, cases, digest

MANIFEST = json.loads((DATA / "golden.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_blob_decodes(name):
    blob = (DATA / f"{name}.cgkv").read_bytes()
    assert cachegen.inspect(blob).version == 1
    assert digest(cachegen.decode(blob, framework="numpy")) == MANIFEST[name]["decoded_sha256"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_encoder_reproduces_golden_bytes(name):
    kv, config = cases()[name]
    assert cachegen.encode(kv, config=config) == (DATA / f"{name}.cgkv").read_bytes()
