"""An instance's token ids for one model: the context (stored as chunks) and the question.

The context is the model's leading special tokens (BOS where the model uses one), the header,
then filler paragraphs from the instance's start with every needle on its own line after the
paragraph where its depth falls; the last paragraph is cut so that the context is exactly
``instance.tokens`` tokens. Pieces are tokenised one by one and joined, so a needle's tokens do
not depend on the text around it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .generators import Instance, Needle, filler_paragraphs


@dataclass(frozen=True)
class Prompt:
    """Token ids ``[1, n]`` of the context and of the question fed after it."""

    context: torch.Tensor
    question: torch.Tensor


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build(instance: Instance, tokenizer: Any) -> Prompt:
    """The prompt of ``instance`` for ``tokenizer``; ``ValueError`` when the header and needles
    alone do not fit in ``instance.tokens``."""
    lead = list(tokenizer("")["input_ids"])
    head = lead + _ids(tokenizer, instance.header + "\n")
    needles = [(n, _ids(tokenizer, n.text + "\n")) for n in instance.needles]
    budget = instance.tokens - len(head) - sum(len(ids) for _, ids in needles)
    if budget <= 0:
        raise ValueError(f"{instance.task} #{instance.index}: no room for filler")
    context = head + _with_needles(_filler(tokenizer, instance.filler_start, budget), needles)
    question = _ids(tokenizer, f"\nQuestion: {instance.question}\nAnswer: {instance.answer_prefix}")
    return Prompt(torch.tensor([context]), torch.tensor([question]))


def _filler(tokenizer: Any, start: int, budget: int) -> list[list[int]]:
    """Paragraphs from ``start`` (cyclic), one id list each, ``budget`` tokens in all."""
    corpus, out, total = filler_paragraphs(), [], 0
    while total < budget:
        ids = _ids(tokenizer, corpus[(start + len(out)) % len(corpus)] + "\n")
        out.append(ids[: budget - total])
        total += len(out[-1])
    return out


def _with_needles(
    paragraphs: list[list[int]], needles: list[tuple[Needle, list[int]]]
) -> list[int]:
    """The paragraphs joined, each needle after the paragraph that reaches its depth."""
    total = sum(len(p) for p in paragraphs)
    out: list[int] = []
    seen = 0  # filler tokens so far
    pending = list(needles)  # sorted by depth
    for paragraph in [[], *paragraphs]:  # the empty first one places depth-0 needles first
        out += paragraph
        seen += len(paragraph)
        while pending and pending[0][0].depth * total <= seen:
            out += pending.pop(0)[1]
    return out
