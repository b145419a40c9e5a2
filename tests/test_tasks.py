"""The long-context task suite (bench/lib/longtasks): the generators' ground truth, the prompt
layout, the chunked round trip, the answer statistics, then a smoke run on SmolLM2."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

from lib.longtasks.generators import TASKS, Instance, generate, suite  # noqa: E402
from lib.longtasks.prompt import build  # noqa: E402
from lib.longtasks.runner import EXACT, Row, coder, roundtrip  # noqa: E402
from lib.longtasks.stats import (  # noqa: E402
    Rate,
    accuracy,
    agreement,
    best_low,
    by_margin,
    correct,
    decided,
    first_word,
    instances_needed,
    smallest_meeting,
    where_right,
    wilson,
    word_agreement,
)


def _facts(instance: Instance, pattern: str) -> dict[str, str]:
    found = [re.fullmatch(pattern, n.text) for n in instance.needles]
    return {m[1]: m[2] for m in found if m}


def _solve(instance: Instance) -> str:
    """The answer worked out from the needles' text alone."""
    if instance.task == "passkey":
        (needle,) = instance.needles
        return re.fullmatch(r"The pass key is (\d+)\. .*", needle.text)[1]
    name = re.search(r"(?:for|VAR|that) (\w+)(?: moved to)?\?$", instance.question)[1]
    if instance.task == "kv":
        return _facts(instance, r"The special magic number for (\w+) is (\d+)\.")[name]
    if instance.task == "vartrack":
        assigned = _facts(instance, r"VAR (\w+) = (?:VAR )?(\w+)\.")
        while not name.isdigit():
            name = assigned[name]
        return name
    moved = _facts(instance, r"(\w+) moved to the city of (\w+)\.")
    return _facts(instance, r"The postal code of (\w+) is (\d+)\.")[moved[name]]


@pytest.mark.parametrize("task", sorted(TASKS))
def test_ground_truth_follows_from_the_needles(task: str) -> None:
    for index in range(30):
        instance = generate(task, index, seed=7)
        assert _solve(instance) == instance.answer
        assert [n.depth for n in instance.needles] == sorted(n.depth for n in instance.needles)
        # The asked-about fact sits at the instance's depth.
        holder = next(
            n for n in instance.needles if instance.answer in n.text or task == "multihop"
        )
        assert task in ("vartrack", "multihop") or holder.depth == instance.depth


def test_generation_is_deterministic_and_varied() -> None:
    first = suite(sorted(TASKS), 15, seed=3)
    assert first == suite(sorted(TASKS), 15, seed=3)
    assert first != suite(sorted(TASKS), 15, seed=4)
    passkeys = [i for i in first if i.task == "passkey"]
    assert len({i.answer for i in passkeys}) == 15
    # 15 consecutive instances cover every (depth, length) pair.
    assert len({(i.depth, i.tokens) for i in passkeys}) == 15
    with pytest.raises(KeyError, match="unknown task"):
        generate("sudoku", 0)


class _Bytes:
    """A byte-level tokenizer with a BOS token (id 256)."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [256] * add_special_tokens + list(text.encode())}


def test_prompt_layout() -> None:
    instance = generate("kv", 2, lengths=(3000,))
    prompt = build(instance, _Bytes())
    ids = prompt.context[0].tolist()
    assert len(ids) == 3000 and ids[0] == 256
    text = bytes(ids[1:]).decode()
    assert text.startswith(instance.header + "\n")
    places = [text.index(n.text + "\n") for n in instance.needles]
    assert places == sorted(places)
    # Each needle sits after the paragraph that reaches its depth: within a paragraph of it.
    for needle, at in zip(instance.needles, places, strict=True):
        assert abs(at / len(text) - needle.depth) < 0.15
    question = bytes(prompt.question[0].tolist()).decode()
    assert question.endswith(f"{instance.question}\nAnswer: {instance.answer_prefix}")
    with pytest.raises(ValueError, match="no room"):
        build(generate("kv", 2, lengths=(100,)), _Bytes())


def _sliding_kv() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two full layers of 700 tokens and a sliding one holding the last 300."""
    torch.manual_seed(0)
    shapes = [(1, 2, 700, 16), (1, 1, 300, 32), (1, 2, 700, 16)]
    return [(torch.randn(s), torch.randn(s)) for s in shapes]


@pytest.mark.parametrize("key", ["int8", "cg40", "ref3", "cg100", "fp16"])
def test_chunked_roundtrip_keeps_every_layer_in_place(key: str) -> None:
    kv = _sliding_kv()
    decoded, nbytes = roundtrip(kv, coder(key), 256)
    assert nbytes > 0
    for (k, v), (k2, v2) in zip(kv, decoded, strict=True):
        assert k2.shape == k.shape and v2.shape == v.shape
        error = max((k2.float() - k).abs().max(), (v2.float() - v).abs().max())
        assert error < {"cg100": 1e-6, "fp16": 4e-3}.get(key, 0.2)  # fp16: half an ulp at 4
        assert key != "cg100" or (torch.equal(k2, k) and torch.equal(v2, v))
    with pytest.raises(KeyError, match="unknown coding"):
        coder("zip9")


def test_wilson_interval() -> None:
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    # The criterion's lower bound of 97% needs 125 instances that all agree.
    assert best_low(125) >= 0.97 > best_low(124)
    assert instances_needed() == 125
    for bad in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson(*bad)


def test_answer_scoring() -> None:
    assert correct("12345.", "12345") and correct("It is 12345", "12345")
    assert not correct("123456", "12345") and not correct("x12345", "12345")

    def row(index: int, method: str, text: str) -> Row:
        return Row("m", "kv", index, 0.5, 2048, method, text, "7", 10, 100, 1.0)

    rows = [row(i, EXACT, "7" if i < 3 else "8") for i in range(4)]
    rows += [row(i, "cg5", "7") for i in range(4)]
    assert agreement(rows, "cg5") == Rate(3, 4)  # instance 3: exact says 8
    assert accuracy(rows, "cg5") == Rate(4, 4) and accuracy(rows, EXACT) == Rate(3, 4)
    assert agreement(where_right(rows), "cg5") == Rate(3, 3)
    assert first_word(" 79959. Remember it.") == "79959" and first_word("...") == ""
    rows.append(row(3, "cg9", "8. Remember it."))
    assert word_agreement(rows, "cg9") == Rate(1, 1) and agreement(rows, "cg9") == Rate(0, 1)
    with pytest.raises(ValueError, match="no uncompressed answer"):
        agreement(rows[1:], "cg5")
    # Instance 0's uncompressed answer is a near-tie, instance 1's margin was never kept.
    rows = [
        r if r.method != EXACT else replace(r, margin=(0.05, None, 2.0, 0.1)[r.index]) for r in rows
    ]
    assert {r.index for r in decided(rows)} == {2, 3}
    assert agreement(decided(rows), "cg5") == Rate(1, 2)
    low, mid, high = by_margin(rows, (0.1, 1.0))  # a margin on an edge goes above it
    assert [{r.index for r in part} for part in (low, mid, high)] == [{0}, {3}, {2}]
    rates = {5: Rate(120, 124), 10: Rate(200, 200), 20: Rate(124, 124), 30: Rate(99, 100)}
    assert smallest_meeting(rates) == 10
    assert smallest_meeting({5: Rate(99, 100)}) is None


@pytest.mark.slow
def test_smoke_on_smollm2() -> None:
    from lib.kvquality.model import compute_kv, continue_logits, load_model
    from lib.longtasks.runner import answer, answer_tokens

    lm = load_model("smollm2")
    instance = generate("passkey", 0, lengths=(256,))
    prompt = build(instance, lm.tokenizer)
    kv = compute_kv(lm, prompt.context)
    # The cache path gives the logits of the whole prompt run at once.
    whole = torch.cat([prompt.context, prompt.question], dim=1)
    with torch.inference_mode():
        expected = lm.model(whole, logits_to_keep=1).logits[0, -1]
    got = continue_logits(lm, kv, prompt.question)[-1]
    assert torch.allclose(got, expected, atol=1e-3) and got.argmax() == expected.argmax()
    # A lossless chunked round trip gives the same cache, so the same answer.
    decoded, _ = roundtrip(kv, coder("cg100"), 128)
    for pair, same in zip(kv, decoded, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(pair, same, strict=True))
    budget = answer_tokens(lm, instance)
    exact, margin = answer(lm, kv, prompt.question, budget)
    assert exact and answer(lm, decoded, prompt.question, budget) == (exact, margin)
    # The margin is the smallest lead of a chosen token over the runner-up: the first token's
    # lead bounds it.
    top = expected.topk(2).values
    assert 0 <= margin <= float(top[0] - top[1]) + 1e-3
