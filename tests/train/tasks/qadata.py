"""A synthetic SQuAD-style set: contexts of templated facts about a made-up place, one question per
context about one of its facts (not always the first sentence); the other facts (other relations,
other made-up names) are the distractors, so the answer is found by matching the question's relation."""

from __future__ import annotations

import random

SYL = ["ka", "lo", "mi", "ra", "to", "ne", "su", "vi", "do", "pe", "ba", "ri", "zo", "ma", "te", "gu"]
RELATIONS = [
    ("The capital of {x} is {y}.", "What is the capital of {x}?"),
    ("The leader of {x} is {y}.", "Who is the leader of {x}?"),
    ("The river of {x} is called {y}.", "What is the river of {x} called?"),
    ("The highest mountain of {x} is {y}.", "What is the highest mountain of {x}?"),
    ("The founder of {x} was {y}.", "Who was the founder of {x}?"),
]
FILLER = [
    "It rains often in spring.",
    "Many people visit in summer.",
    "The roads are long and quiet.",
    "Old maps show several islands.",
]


def _name(rng: random.Random) -> str:
    return "".join(rng.choice(SYL) for _ in range(rng.randint(2, 3))).capitalize()


def examples(n: int, seed: int = 0, facts: tuple[int, int] = (3, 5)) -> list[dict]:
    """``n`` rows ``{id, question, context, answers}`` (Hugging Face's answers format): a context of
    3-5 facts of different relations about one place plus a filler sentence, in random order."""
    rng = random.Random(seed)
    rows = []
    for k in range(n):
        place = _name(rng)
        rels = rng.sample(RELATIONS, rng.randint(*facts))
        objects = [_name(rng) for _ in rels]
        sentences = [fact.format(x=place, y=y) for (fact, _), y in zip(rels, objects)]
        sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(FILLER))
        j = rng.randrange(len(rels))
        context = " ".join(sentences)
        prefix = rels[j][0].split("{y}")[0].format(x=place)
        start = context.index(prefix) + len(prefix)
        assert context[start : start + len(objects[j])] == objects[j]
        rows.append(
            {
                "id": f"q{k}",
                "question": rels[j][1].format(x=place),
                "context": context,
                "answers": {"text": [objects[j]], "answer_start": [start]},
            }
        )
    return rows


def first_sentence_answer(context: str) -> str:
    """The trivial baseline: the last word of the context's first sentence (a fact's object, or filler)."""
    first = context.split(".")[0]
    return first.split()[-1] if first.split() else ""
