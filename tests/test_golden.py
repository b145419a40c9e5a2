"""The committed golden blobs of every format version decode to the committed digests, so no
version can change by accident; the encoder reproduces the current version's byte for byte."""

from __future__ import annotations

import json

import pytest
from golden import DATA, blob_name, cases, digest, golden_transforms

import cachegen

MANIFEST = json.loads((DATA / "golden.json").read_text())


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_golden_blob_decodes(name, cpu_path):
    blob = (DATA / f"{name}.cgkv").read_bytes()
    assert cachegen.inspect(blob).version == MANIFEST[name]["version"]
    decoded = cachegen.decode(blob, framework="numpy", transforms=golden_transforms())
    assert digest(decoded) == MANIFEST[name]["decoded_sha256"]


def test_every_version_has_golden_blobs():
    versions = {m["version"] for m in MANIFEST.values()}
    assert versions == set(range(1, cachegen.FORMAT_VERSION + 1))


@pytest.mark.parametrize("case", sorted(cases()))
def test_encoder_reproduces_golden_bytes(case, cpu_path):
    kv, config, transform = cases()[case]
    blob = cachegen.encode(kv, config=config, transform=transform)
    assert blob == (DATA / f"{blob_name(case)}.cgkv").read_bytes()
