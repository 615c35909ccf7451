"""A synthetic, learnable NER set: person names after titles/verbs, cities (some two words) after
place prepositions, organisations after "works for"; IOB2 tags; written as CoNLL or JSONL."""

from __future__ import annotations

import json
import os
import random

FIRST = ["John", "Maria", "Ahmed", "Yuki", "Olga", "Pierre", "Chen", "Fatima", "Lars", "Ana"]
LAST = ["Smith", "Garcia", "Khan", "Tanaka", "Ivanova", "Dubois", "Wang", "Okafor", "Berg", "Silva"]
CITY = [["Paris"], ["Berlin"], ["Tokyo"], ["Lagos"], ["Lima"], ["New", "York"], ["San", "Diego"], ["Oslo"]]
ORG = [["Acme"], ["Globex"], ["Initech"], ["United", "Bank"], ["Red", "Cross"], ["Nokia"]]
FILL = ["yesterday", "today", "again", "often", "early", "late"]


def _ent(words: list[str], typ: str) -> list[tuple[str, str]]:
    return [(w, ("B-" if i == 0 else "I-") + typ) for i, w in enumerate(words)]


def sentence(rng: random.Random) -> list[tuple[str, str]]:
    person = [rng.choice(FIRST)] + ([rng.choice(LAST)] if rng.random() < 0.6 else [])
    city, org = rng.choice(CITY), rng.choice(ORG)
    k = rng.randrange(4)
    o = lambda *ws: [(w, "O") for w in ws]  # noqa: E731
    if k == 0:
        return o("Mr.") + _ent(person, "PER") + o("visited") + _ent(city, "LOC") + o(rng.choice(FILL), ".")
    if k == 1:
        return (
            _ent(person, "PER") + o("works", "for") + _ent(org, "ORG") + o("in") + _ent(city, "LOC") + o(".")
        )
    if k == 2:
        return o("we", "met") + _ent(person, "PER") + o("in") + _ent(city, "LOC") + o(rng.choice(FILL), ".")
    return o("the", "office", "of") + _ent(org, "ORG") + o("is", "in") + _ent(city, "LOC") + o(".")


def sentences(n: int, seed: int = 0) -> list[list[tuple[str, str]]]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(n)]


def write_conll(path: str, sents, docstart: bool = True) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        if docstart:
            fh.write("-DOCSTART- -X- O\n\n")
        for s in sents:
            fh.writelines(f"{w}\t{t}\n" for w, t in s)
            fh.write("\n")
    return path


def write_jsonl(path: str, sents, tokens: str = "tokens", tags: str = "tags") -> str:
    with open(path, "w", encoding="utf-8") as fh:
        for s in sents:
            fh.write(json.dumps({tokens: [w for w, _ in s], tags: [t for _, t in s]}) + "\n")
    return path
