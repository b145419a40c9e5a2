"""The quality run: prefix -> KV -> encode -> decode -> teacher-forced continuation -> metrics.

For each document the model prefills ``prefix`` tokens once; the reference continuation (the
uncompressed cache) is computed once; then every method's decoded cache is continued over the
same ``cont`` real tokens. Logits at continuation position ``i`` predict token
``prefix + i + 1``, so all ``cont`` scored predictions attend to the (decoded) prefix cache.
Methods whose decoded cache is identical (the lossless ones on fp16) share one model run.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .docs import Document
from .methods import KV, Method
from .metrics import TokenMetrics, compare, log_probs, nll_sum
from .model import LoadedModel, continue_logits, load_model, prefill

PREFIX_TOKENS = 1536
CONT_TOKENS = 256


@dataclass(frozen=True)
class Result:
    """One method on one document (``doc`` "all": pooled over documents)."""

    doc: str
    method: str
    label: str
    kv_elements: int
    blob_bytes: int
    bits_per_element: float
    kl_mean: float  # mean over positions of KL(uncompressed || decoded), nats
    top1_agreement: float
    ppl: float  # perplexity of the continuation on the decoded cache
    ppl_ref: float  # ... on the uncompressed cache
    ppl_delta_pct: float
    encode_s: float
    decode_s: float
    positions: int
    kl_sum: float
    top1_agree: int
    nll_sum: float
    ref_nll_sum: float


@dataclass(frozen=True)
class DocCase:
    """A document prepared once: its prefix KV and the reference continuation."""

    doc: str
    kv: KV
    cont_ids: torch.Tensor  # [1, cont] tokens fed after the prefix
    targets: torch.Tensor  # [cont] true next tokens
    ref_logp: torch.Tensor  # [cont, vocab] float64 log-probs on the uncompressed cache
    ref_nll_sum: float
    scored: dict[bytes, TokenMetrics] = field(default_factory=dict)  # by decoded-KV digest


def prepare(lm: LoadedModel, doc: Document, prefix: int, cont: int) -> DocCase:
    """Tokenise ``doc``, prefill its prefix and run the reference continuation."""
    ids = lm.tokenizer(doc.text, return_tensors="pt")["input_ids"]
    if ids.shape[1] < prefix + cont + 1:
        raise ValueError(f"{doc.name}: {ids.shape[1]} tokens, need {prefix + cont + 1}")
    kv = prefill(lm, ids[:, :prefix])
    cont_ids = ids[:, prefix : prefix + cont]
    targets = ids[0, prefix + 1 : prefix + cont + 1]
    ref_logp = log_probs(continue_logits(lm, kv, cont_ids))
    return DocCase(doc.name, kv, cont_ids, targets, ref_logp, nll_sum(ref_logp, targets))


def evaluate(lm: LoadedModel, case: DocCase, method: Method) -> Result:
    """Round-trip ``case.kv`` through ``method`` and score the continuation."""
    t0 = time.perf_counter()
    blob = method.encode(case.kv)
    t1 = time.perf_counter()
    decoded = method.decode(blob, case.kv)
    t2 = time.perf_counter()
    metrics = _score(lm, case, decoded)
    elements = sum(k.numel() + v.numel() for k, v in case.kv)
    return _result(
        case.doc,
        (method.key, method.label),
        elements,
        len(blob),
        metrics,
        case.ref_nll_sum,
        (t1 - t0, t2 - t1),
    )


def _score(lm: LoadedModel, case: DocCase, decoded: KV) -> TokenMetrics:
    """Continue from ``decoded`` and compare with the reference, once per distinct cache."""
    key = _digest(decoded)
    if key not in case.scored:
        logits = continue_logits(lm, decoded, case.cont_ids)
        case.scored[key] = compare(case.ref_logp, logits, case.targets)
    return case.scored[key]


def _digest(kv: KV) -> bytes:
    """Content hash of a KV cache (values, dtypes and shapes)."""
    h = hashlib.blake2b(digest_size=32)
    for t in (t for pair in kv for t in pair):
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy())
    return h.digest()


def _result(
    doc: str,
    method: tuple[str, str],
    elements: int,
    nbytes: int,
    m: TokenMetrics,
    ref_nll_sum: float,
    seconds: tuple[float, float],
) -> Result:
    """Derive the reported means from the sums; ``method`` is (key, label), ``seconds`` the
    encode and decode times."""
    ppl, ppl_ref = math.exp(m.nll_sum / m.positions), math.exp(ref_nll_sum / m.positions)
    return Result(
        doc=doc,
        method=method[0],
        label=method[1],
        kv_elements=elements,
        blob_bytes=nbytes,
        bits_per_element=nbytes * 8 / elements,
        kl_mean=m.kl_sum / m.positions,
        top1_agreement=m.top1_agree / m.positions,
        ppl=ppl,
        ppl_ref=ppl_ref,
        ppl_delta_pct=100 * (ppl / ppl_ref - 1),
        encode_s=seconds[0],
        decode_s=seconds[1],
        positions=m.positions,
        kl_sum=m.kl_sum,
        top1_agree=m.top1_agree,
        nll_sum=m.nll_sum,
        ref_nll_sum=ref_nll_sum,
    )


def pool(results: Sequence[Result]) -> list[Result]:
    """One row per method, pooled over documents: sums added, then means taken again."""
    pooled = []
    for key in dict.fromkeys(r.method for r in results):
        rows = [r for r in results if r.method == key]
        m = TokenMetrics(
            positions=sum(r.positions for r in rows),
            kl_sum=sum(r.kl_sum for r in rows),
            top1_agree=sum(r.top1_agree for r in rows),
            nll_sum=sum(r.nll_sum for r in rows),
        )
        pooled.append(
            _result(
                "all",
                (key, rows[0].label),
                sum(r.kv_elements for r in rows),
                sum(r.blob_bytes for r in rows),
                m,
                sum(r.ref_nll_sum for r in rows),
                (sum(r.encode_s for r in rows), sum(r.decode_s for r in rows)),
            )
        )
    return pooled


def run_quality(
    methods: Sequence[Method],
    docs: Sequence[Document],
    *,
    prefix: int = PREFIX_TOKENS,
    cont: int = CONT_TOKENS,
    lm: LoadedModel | None = None,
    progress: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Evaluate every method on every document; one ``Result`` per (document, method).

    The model is loaded once (``load_model`` caches it) and each document's prefill and
    reference continuation are computed once, shared by all methods. ``progress`` is called
    with each result as it is produced.
    """
    lm = lm or load_model()
    results = []
    for doc in docs:
        case = prepare(lm, doc, prefix, cont)
        for method in methods:
            result = evaluate(lm, case, method)
            results.append(result)
            if progress:
                progress(result)
    return results
