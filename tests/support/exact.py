"""Bit-exact comparison of decoded caches: numpy arrays or torch tensors (on any device), alone or
as lists of (K, V) pairs."""

from __future__ import annotations

from typing import Any

import numpy as np


def bits(x: Any) -> np.ndarray:
    """The raw bits of one array or tensor as unsigned integers of its element size."""
    if not isinstance(x, np.ndarray):  # a torch tensor
        import torch

        x = x.detach().contiguous().cpu()
        x = x.view(torch.int16 if x.element_size() == 2 else torch.int32).numpy()
    x = np.ascontiguousarray(x)
    return x.view({2: np.uint16, 4: np.uint32}[x.itemsize])


def assert_same_bits(a: Any, b: Any) -> None:
    """`a` and `b` (arrays, tensors, or lists of (K, V) pairs of them) hold the same bits."""
    flat_a = [t for pair in a for t in pair] if isinstance(a, list) else [a]
    flat_b = [t for pair in b for t in pair] if isinstance(b, list) else [b]
    assert len(flat_a) == len(flat_b)
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_array_equal(bits(x), bits(y))
