"""The suite's run: prefill each instance once, keep its exact KV, and answer from it and from
each coding's decoded cache.

A coding stores the context as chunks of ``chunk_tokens``, each coded on its own and told its
place (``position``, ``context_end``), as ``cachegen.context.save_context`` stores them; the
decoded chunks are joined again per layer (sliding-window layers hold only their last tokens).
Answers are greedy, from the question fed after the cache, up to the first newline.

Every answer is kept in a JSON-lines file keyed by the model, the prompt's token ids, the chunk
size, the codec version and the coding's settings, so an interrupted run resumes and a rerun
recomputes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import cachegen
from cachegen.context.layers import assemble, chunk_layer_tokens, layer_counts, slice_chunk
from cachegen.hf import to_cache

from .. import RESULTS_FORMAT
from ..kvquality.methods import Method, int_method, raw_method
from ..kvquality.model import KV, LoadedModel, compute_kv
from .generators import Instance
from .prompt import Prompt, build

EXACT = "exact"  # the uncompressed cache's answers


@dataclass(frozen=True)
class Coder:
    """A coding of one chunk: ``encode(chunk, position, context_end)`` and ``decode(blob,
    chunk)`` (the chunk only for its shapes); ``settings`` names what its bytes depend on."""

    key: str
    settings: str
    encode: Callable[[KV, int, int], bytes]
    decode: Callable[[bytes, KV], KV]


def _codec(key: str, config: cachegen.CodecConfig) -> Coder:
    def encode(part: KV, position: int, end: int) -> bytes:
        return cachegen.encode(part, config=config, position=position, context_end=end)

    settings = json.dumps(config.to_json(), sort_keys=True)
    return Coder(key, settings, encode, lambda blob, _: list(cachegen.decode(blob)))


def _whole(method: Method) -> Coder:
    """A method that codes each chunk as it is, wherever it sits."""
    return Coder(method.key, method.label, lambda part, *_: method.encode(part), method.decode)


def coder(key: str) -> Coder:
    """``cgN``: ladder level N (``cg100``: lossless); ``refN``: CacheGen's reference quantizer
    N; ``int4``/``int8``: uniform per-token quantisation; ``fp16``: the cache rounded to fp16,
    what a serving engine holds (a control: no codec)."""
    if key.startswith("cg"):
        return _codec(key, cachegen.CodecConfig.from_level(int(key[2:])))
    if key.startswith("ref"):
        return _codec(key, cachegen.CodecConfig.cachegen_reference(int(key[3:])))
    if key in ("int4", "int8"):
        return _whole(int_method(int(key[3:])))
    if key == "fp16":
        return _whole(raw_method(16))
    raise KeyError(f"unknown coding {key!r}: cgN, refN, int4, int8 or fp16")


def roundtrip(kv: KV, c: Coder, chunk_tokens: int) -> tuple[KV, int]:
    """``kv`` coded chunk by chunk and decoded again, and the bytes the chunks' blobs took."""
    counts = layer_counts(kv)
    end = max(counts)
    spans = [(s, min(s + chunk_tokens, end)) for s in range(0, end, chunk_tokens)]
    decoded, inside, nbytes = [], [], 0
    for start, stop in spans:
        part = slice_chunk(kv, start, stop)
        blob = c.encode(part, start, end)
        nbytes += len(blob)
        decoded.append(c.decode(blob, part))
        inside.append(chunk_layer_tokens(counts, start, stop))
    return assemble(decoded, inside, [b - a for a, b in spans]), nbytes


def answer(lm: LoadedModel, kv: KV, question: torch.Tensor, max_new: int) -> tuple[str, float]:
    """The greedy answer after ``question`` on a fresh cache holding ``kv`` (its first line),
    and its margin: the smallest gap between the chosen token's logit and the runner-up's over
    the tokens it took. A gap near 0 is a near-tie that any change to the cache may flip."""
    cache = to_cache(kv, lm.model.config)
    eos = lm.tokenizer.eos_token_id
    out: list[int] = []
    margin = math.inf
    with torch.inference_mode():
        logits = lm.model(question, cache=cache, use_cache=True, logits_to_keep=1).logits
        while len(out) < max_new:
            top = logits[0, -1].float().topk(2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            token = int(top.indices[0])
            if token == eos:
                break
            out.append(token)
            if "\n" in lm.tokenizer.decode(out):
                break
            logits = lm.model(torch.tensor([[token]]), cache=cache, use_cache=True).logits
    return lm.tokenizer.decode(out).split("\n")[0].strip(), margin


def answer_tokens(lm: LoadedModel, instance: Instance) -> int:
    """The answer's tokens plus a few, so that a longer or wrong answer shows too."""
    return len(lm.tokenizer(" " + instance.answer, add_special_tokens=False)["input_ids"]) + 4


@dataclass(frozen=True)
class Row:
    """One answer: of ``method`` (a coding's key or ``EXACT``) on one instance."""

    model: str
    task: str
    index: int
    depth: float
    tokens: int
    method: str
    answer: str
    truth: str
    blob_bytes: int  # the chunks' blobs (0 for EXACT)
    elements: int  # KV elements of the context
    seconds: float  # prefill for EXACT, else round trip + answer
    margin: float | None = None  # `answer`'s margin (None: answered before it was kept)


class AnswerStore:
    """The JSON-lines file of answers (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lines = path.read_text().splitlines() if path.exists() else []
        self.rows = {r["key"]: r["row"] for r in map(json.loads, filter(None, lines))}

    def key(self, lm: LoadedModel, prompt: Prompt, chunk_tokens: int, settings: str) -> str:
        what = prompt.context.numpy().tobytes() + b"|" + prompt.question.numpy().tobytes()
        digest = hashlib.sha256(what).hexdigest()[:24]
        return f"{lm.key}|{digest}|{chunk_tokens}|{RESULTS_FORMAT}|{settings}"

    def add(self, key: str, row: Row) -> None:
        self.rows[key] = asdict(row)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"key": key, "row": self.rows[key]}) + "\n")


def run_instance(
    lm: LoadedModel, instance: Instance, coders: list[Coder], chunk_tokens: int, store: AnswerStore
) -> list[Row]:
    """The exact answer and each coding's on ``instance``; one prefill, and only for answers
    the store lacks."""
    prompt = build(instance, lm.tokenizer)
    settings = {c.key: c.settings for c in coders} | {EXACT: EXACT}
    keys = {m: store.key(lm, prompt, chunk_tokens, s) for m, s in settings.items()}
    missing = [m for m in keys if keys[m] not in store.rows]
    if EXACT not in missing and store.rows[keys[EXACT]].get("margin") is None:
        missing.append(EXACT)  # an answer kept before margins were: its margin is wanted
    if missing:
        t0 = time.perf_counter()
        kv = compute_kv(lm, prompt.context)
        prefill_s = time.perf_counter() - t0
        elements = sum(k.numel() + v.numel() for k, v in kv)
        max_new = answer_tokens(lm, instance)

        def row(method: str, said: tuple[str, float], nbytes: int, seconds: float) -> Row:
            return Row(
                lm.key, instance.task, instance.index, instance.depth, instance.tokens,
                method, said[0], instance.answer, nbytes, elements, seconds, said[1],
            )  # fmt: skip

        if EXACT in missing:
            store.add(
                keys[EXACT], row(EXACT, answer(lm, kv, prompt.question, max_new), 0, prefill_s)
            )
        for c in (c for c in coders if c.key in missing):
            t0 = time.perf_counter()
            decoded, nbytes = roundtrip(kv, c, chunk_tokens)
            said = answer(lm, decoded, prompt.question, max_new)
            store.add(keys[c.key], row(c.key, said, nbytes, time.perf_counter() - t0))
    return [Row(**store.rows[keys[m]]) for m in keys]
