"""The skip mark of tests that need a CUDA build and a CUDA device (run when a GPU is lent)."""

from __future__ import annotations

import pytest

import cachegen

requires_cuda = pytest.mark.skipif(
    not cachegen.build_info()["cuda_available"], reason="needs a CUDA build and a CUDA device"
)
