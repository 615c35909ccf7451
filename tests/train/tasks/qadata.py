"""A synthetic SQuAD-style set a small pretrained encoder learns in a few dozen steps: a context is 3-5
short facts of different kinds in random order ("The hat is red.", "Anna lives in Paris.", ...), the
question asks about one of them, so the answer sits at any sentence position and is found by matching
the question's kind and subject. Every word is a common English word the MiniLM tokenizer keeps whole."""

from __future__ import annotations

import random

NAMES = ["Tom", "Anna", "Mary", "John", "Paul", "Emma", "Jack", "Lucy", "Peter", "Sarah", "David", "Kate"]
#: (fact, question, subjects, answers): the fact names a subject {x} and its answer {y}
KINDS = [
    ("The {x} is {y}.", "What colour is the {x}?", ["car", "ball", "hat", "door", "box", "cup", "lamp", "bag"],
     ["red", "blue", "green", "yellow", "black", "white", "brown", "pink"]),
    ("{x} lives in {y}.", "Where does {x} live?", NAMES,
     ["London", "Paris", "Rome", "Berlin", "Tokyo", "Madrid", "Boston", "Dublin"]),
    ("{x} has {y} dogs.", "How many dogs does {x} have?", NAMES,
     ["two", "three", "four", "five", "six", "seven", "eight", "nine"]),
    ("The {x} starts on {y}.", "When does the {x} start?", ["party", "game", "concert", "class", "show"],
     ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]),
    ("{x} works as a {y}.", "What is the job of {x}?", NAMES,
     ["doctor", "teacher", "farmer", "pilot", "lawyer", "nurse", "driver", "baker"]),
]  # fmt: skip


def examples(n: int, seed: int = 0, facts: tuple[int, int] = (3, 5)) -> list[dict]:
    """``n`` rows ``{id, question, context, answers}`` (Hugging Face's answers format): a context of
    3-5 facts of different kinds (people distinct within a context), the question about one of them."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kinds = rng.sample(KINDS, rng.randint(*facts))
        people = iter(rng.sample(NAMES, len(kinds)))
        picked = [(k, next(people) if k[2] is NAMES else rng.choice(k[2]), rng.choice(k[3])) for k in kinds]
        sentences = [fact.format(x=x, y=y) for (fact, *_), x, y in picked]
        j = rng.randrange(len(picked))
        (fact, question, *_), x, y = picked[j]
        context = " ".join(sentences)
        start = context.index(fact.format(x=x, y=y)) + len(fact.split("{y}")[0].format(x=x))
        assert context[start : start + len(y)] == y
        rows.append(
            {
                "id": f"q{i}",
                "question": question.format(x=x),
                "context": context,
                "answers": {"text": [y], "answer_start": [start]},
            }
        )
    return rows


def first_sentence_answer(context: str) -> str:
    """The trivial baseline: the last word of the context's first sentence."""
    first = context.split(".")[0]
    return first.split()[-1] if first.split() else ""
