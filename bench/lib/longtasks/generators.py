"""Long-context task instances generated in-process, each with its ground truth.

Four task types, after RULER's synthetic tasks:

* ``passkey``: one pass key hidden at a given depth of irrelevant text;
* ``kv``: several key-value facts; the question asks for the one at the given depth;
* ``vartrack``: a chain of variable assignments (``VAR B = VAR A``) starting at the given depth,
  beside a distractor chain; the question asks for the value at the chain's end;
* ``multihop``: people who moved to cities and the cities' postal codes; the question asks for
  the postal code of one person's city (two lookups).

An instance is text only (no tokenizer): the facts ("needles") with the fraction of the filler
that precedes each, the question and the answer. ``prompt.build`` turns it into token ids for
one model. Everything derives from ``(seed, task, index)``: a rerun generates the same suite.

The filler is the Python reference documentation that ships with every Python
(``pydoc_data.topics``): English prose that no level of the ladder was tuned or reported on.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable
from dataclasses import dataclass

#: Depths (fraction of the filler before the asked-about fact) the instances cycle through.
DEPTHS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: Context lengths in tokens the instances cycle through.
LENGTHS = (2048, 3072, 4096)
_SYLLABLES = ("ka", "lo", "mir", "ven", "tas", "dor", "pel", "ri", "sun", "bex", "quo", "zal")
_PEOPLE = ("Alice", "Bruno", "Chen", "Dalia", "Emeka", "Farah", "Goran", "Hana", "Ivo", "Jun")


@dataclass(frozen=True)
class Needle:
    """A fact inserted into the filler after ``depth`` of it (0: at its start)."""

    text: str
    depth: float


@dataclass(frozen=True)
class Instance:
    """One task instance: what the context holds, what is asked, and the right answer."""

    task: str
    index: int
    depth: float  # where the asked-about fact sits
    tokens: int  # the context's length in tokens, question excluded
    filler_start: int  # the first filler paragraph (cyclic)
    header: str  # the task's instruction, at the context's start
    needles: tuple[Needle, ...]  # sorted by depth
    question: str
    answer_prefix: str  # the answer's first words, fed after the question
    answer: str


def _word(rng: random.Random, syllables: int = 3) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(syllables)).capitalize()


def _words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct made-up words (no model knows them)."""
    out: list[str] = []
    while len(out) < n:
        w = _word(rng)
        if w not in out:
            out.append(w)
    return out


def _numbers(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct 5-digit numbers."""
    return [str(x) for x in rng.sample(range(10000, 100000), n)]


def _spread(rng: random.Random, n: int, first: float) -> list[float]:
    """``n`` increasing depths, the first ``first``, the others after it."""
    return [first] + sorted(rng.uniform(first, 0.98) for _ in range(n - 1))


def _passkey(rng: random.Random, depth: float) -> tuple[str, list[Needle], str, str, str]:
    key = _numbers(rng, 1)[0]
    header = (
        "There is a pass key hidden inside a lot of irrelevant text. Find it and memorize it. "
        "I will quiz you about the pass key."
    )
    needle = Needle(f"The pass key is {key}. Remember it. {key} is the pass key.", depth)
    return header, [needle], "What is the pass key?", "The pass key is", key


def _kv(rng: random.Random, depth: float) -> tuple[str, list[Needle], str, str, str]:
    keys, values = _words(rng, 6), _numbers(rng, 6)
    depths = [depth] + [rng.uniform(0.02, 0.98) for _ in keys[1:]]
    needles = [
        Needle(f"The special magic number for {k} is {v}.", d)
        for k, v, d in zip(keys, values, depths, strict=True)
    ]
    header = (
        "Some special magic numbers are hidden inside the following text. Memorize them. "
        "I will quiz you about one of them."
    )
    question = f"What is the special magic number for {keys[0]}?"
    return header, needles, question, f"The special magic number for {keys[0]} is", values[0]


def _vartrack(rng: random.Random, depth: float) -> tuple[str, list[Needle], str, str, str]:
    names, (value, other) = [w.upper() for w in _words(rng, 8)], _numbers(rng, 2)
    needles = []
    for chain, start, number in ((names[:4], depth, value), (names[4:], rng.random(), other)):
        texts = [f"VAR {chain[0]} = {number}."]
        texts += [f"VAR {b} = VAR {a}." for a, b in zip(chain, chain[1:], strict=False)]
        at = _spread(rng, len(texts), min(start, 0.9))
        needles += [Needle(t, d) for t, d in zip(texts, at, strict=True)]
    header = "Memorize and track the chain(s) of variable assignments hidden in the following text."
    question = f"What is the value of VAR {names[3]}?"
    return header, needles, question, f"The value of VAR {names[3]} is", value


def _multihop(rng: random.Random, depth: float) -> tuple[str, list[Needle], str, str, str]:
    people, cities, codes = rng.sample(_PEOPLE, 4), _words(rng, 4), _numbers(rng, 4)
    moves = [
        Needle(f"{p} moved to the city of {c}.", rng.uniform(0.02, 0.98))
        for p, c in zip(people, cities, strict=True)
    ]
    postal = [
        Needle(f"The postal code of {c} is {n}.", rng.uniform(0.02, 0.98))
        for c, n in zip(cities, codes, strict=True)
    ]
    moves[0] = Needle(moves[0].text, depth)
    header = "Read the following text and remember where people moved and the cities' postal codes."
    question = f"What is the postal code of the city that {people[0]} moved to?"
    return header, moves + postal, question, "The postal code of that city is", codes[0]


Generator = Callable[[random.Random, float], tuple[str, list[Needle], str, str, str]]
TASKS: dict[str, Generator] = {
    "passkey": _passkey,
    "kv": _kv,
    "vartrack": _vartrack,
    "multihop": _multihop,
}


def generate(task: str, index: int, seed: int = 0, lengths: tuple[int, ...] = LENGTHS) -> Instance:
    """Instance ``index`` of ``task``: its depth cycles through ``DEPTHS`` and its length through
    ``lengths`` (with 5 depths and 3 lengths, 15 consecutive instances cover every pair)."""
    if task not in TASKS:
        raise KeyError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    rng = random.Random(f"{seed}:{task}:{index}")
    depth = DEPTHS[index % len(DEPTHS)]
    header, needles, question, prefix, answer = TASKS[task](rng, depth)
    return Instance(
        task=task,
        index=index,
        depth=depth,
        tokens=lengths[index % len(lengths)],
        filler_start=rng.randrange(len(filler_paragraphs())),
        header=header,
        needles=tuple(sorted(needles, key=lambda n: n.depth)),
        question=question,
        answer_prefix=prefix,
        answer=answer,
    )


def suite(
    tasks: list[str], per_task: int, seed: int = 0, lengths: tuple[int, ...] = LENGTHS
) -> list[Instance]:
    """``per_task`` instances of each task, the tasks interleaved (a partial run covers all)."""
    return [generate(t, i, seed, lengths) for i in range(per_task) for t in tasks]


@functools.cache
def filler_paragraphs() -> tuple[str, ...]:
    """The filler corpus: the paragraphs of Python's reference documentation, in topic order."""
    from pydoc_data.topics import topics

    paragraphs = (p.strip() for name in sorted(topics) for p in topics[name].split("\n\n"))
    return tuple(" ".join(p.split()) for p in paragraphs if len(p) >= 80)
