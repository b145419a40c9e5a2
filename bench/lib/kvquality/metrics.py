"""Next-token distribution metrics of a run on a decoded cache against the uncompressed run."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenMetrics:
    """Per-position sums over one continuation, so documents can be pooled exactly."""

    positions: int
    kl_sum: float  # sum over positions of KL(reference || candidate), nats
    top1_agree: int  # positions where both runs rank the same token first
    nll_sum: float  # sum of -log p_candidate(true next token), nats


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    """Float64 log-softmax: tiny divergences (fp16 rounding of the cache) survive cancellation."""
    return torch.log_softmax(logits.double(), dim=-1)


def nll_sum(logp: torch.Tensor, targets: torch.Tensor) -> float:
    """Sum of ``-logp[i, targets[i]]``."""
    return float(-logp.gather(-1, targets.view(-1, 1)).sum())


def compare(ref_logp: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> TokenMetrics:
    """Compare a candidate run's logits ``[n, vocab]`` with the reference run's log-probs.

    ``targets[i]`` is the true token following position ``i``.
    """
    cand = log_probs(logits)
    kl = (ref_logp.exp() * (ref_logp - cand)).sum(dim=-1)
    return TokenMetrics(
        positions=int(targets.numel()),
        kl_sum=float(kl.sum()),
        top1_agree=int((ref_logp.argmax(-1) == cand.argmax(-1)).sum()),
        nll_sum=nll_sum(cand, targets),
    )
