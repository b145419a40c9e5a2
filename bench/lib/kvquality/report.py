"""Quality results as JSON + a markdown table, with the machine and commit they came from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers

from ..runinfo import RunInfo, describe
from .harness import Result, pool


def run_info(model: str, prefix: int, cont: int) -> dict[str, Any]:
    """Where and on what the numbers were taken; call it before the run, as the tree may move."""
    import cachegen

    return RunInfo.capture().as_dict() | {
        "cachegen_build": cachegen.build_info(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "model": model,
        "prefix_tokens": prefix,
        "continuation_tokens": cont,
    }


def write_report(results: Sequence[Result], info: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write ``quality.json`` and ``quality.md`` under ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pooled = pool(results)
    data = {
        "run": info,
        "pooled": [asdict(r) for r in pooled],
        "per_doc": [asdict(r) for r in results],
    }
    json_path, md_path = out_dir / "quality.json", out_dir / "quality.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(markdown(results, info))
    return [json_path, md_path]


def markdown(results: Sequence[Result], info: dict[str, Any]) -> str:
    """The pooled table, then one table per document, headed by the run facts."""
    docs = list(dict.fromkeys(r.doc for r in results))
    lines = [
        "# KV cache quality",
        "",
        f"{info['model']}; prefix {info['prefix_tokens']} tokens, continuation "
        f"{info['continuation_tokens']} tokens (teacher forcing) on the decoded prefix cache.",
        f"Documents: {', '.join(docs)}. {describe(info)} torch {info['torch']}, "
        f"transformers {info['transformers']}.",
        "",
        "bits/elt: every byte of the blob x 8 / KV elements. KL: mean KL(uncompressed || decoded)"
        " of next-token distributions, nats. top-1: agreement of the argmax with the"
        " uncompressed run. PPL: perplexity of the continuation; dPPL relative to uncompressed."
        " encode/decode s: wall time (summed over documents in the pooled table).",
        "",
        "## All documents pooled",
        "",
        *table(pool(results)),
    ]
    for doc in docs:
        lines += ["", f"## {doc}", "", *table([r for r in results if r.doc == doc])]
    return "\n".join(lines) + "\n"


def table(rows: Sequence[Result]) -> list[str]:
    """Markdown table lines for ``rows``."""
    out = [
        "| method | bits/elt | x vs fp16 | KL | top-1 | PPL | dPPL | encode s | decode s |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in rows:
        out.append(
            f"| {r.label} (`{r.method}`) | {r.bits_per_element:.3f} | "
            f"{16 / r.bits_per_element:.2f} | {r.kl_mean:.2e} | {r.top1_agreement:.4f} | "
            f"{r.ppl:.3f} | {r.ppl_delta_pct:+.2f}% | {r.encode_s:.2f} | {r.decode_s:.2f} |"
        )
    return out
