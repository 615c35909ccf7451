"""Image-text retrieval metrics: recall@k both ways and zero-shot classification accuracy.

Duplicates are handled by scoring *distinct* images and *distinct* captions: rows that share an image
key (its path or bytes) are one image, rows that share a caption text are one caption, and an image and
a caption are relevant to each other when some row pairs them. So an image with five captions is a
hit at k when ANY of its captions is in its top k (and is not penalised for ranking its own other
captions first), and a generic caption shared by several images ("a photo of a dog") is a hit when
any of those images is in its top k.

    image -> text recall@k = share of distinct images with a relevant caption among their k best captions
    text -> image recall@k = share of distinct captions with a relevant image among their k best images
    mean_recall@1 = (i2t_recall@1 + t2i_recall@1) / 2          (the default best metric)

Similarities are cosines (the embeddings are L2-normalised here); the temperature does not change a
ranking. Ties are broken by position (``topk``). The N x M similarity matrix is built in row chunks,
so a large evaluation split does not need it in memory at once.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["KS", "group_ids", "retrieval_metrics", "zero_shot_accuracy", "zero_shot_prompts", "top_k"]

KS = (1, 5, 10)
_CHUNK = 1024


def group_ids(keys: Sequence[Hashable]) -> tuple[torch.Tensor, list[int]]:
    """(the group of each row (N,), the first row of each group): equal keys share a group."""
    index: dict[Hashable, int] = {}
    first: list[int] = []
    ids = []
    for i, k in enumerate(keys):
        if k not in index:
            index[k] = len(first)
            first.append(i)
        ids.append(index[k])
    return torch.tensor(ids, dtype=torch.long), first


def top_k(queries: torch.Tensor, keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cosine scores, indices) of the ``k`` best keys per query, (Q, k) each, in row chunks."""
    q, kk = F.normalize(queries.float(), dim=-1), F.normalize(keys.float(), dim=-1)
    k = min(k, kk.shape[0])
    scores, idx = [], []
    for s in range(0, q.shape[0], _CHUNK):
        v, i = (q[s : s + _CHUNK] @ kk.T).topk(k, dim=1)
        scores.append(v)
        idx.append(i)
    return torch.cat(scores), torch.cat(idx)


def _recall(rel: torch.Tensor, ranked: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """rel (Q, M) bool relevance, ranked (Q, kmax) key indices -> {k: share of queries hit within k}."""
    hits = rel.gather(1, ranked)  # (Q, kmax): is the r-th ranked key relevant
    never = torch.full((hits.shape[0],), hits.shape[1], dtype=torch.long)
    first = torch.where(hits.any(1), hits.float().argmax(1), never)  # rank of the first relevant key
    return {k: float((first < k).float().mean()) for k in ks}


def retrieval_metrics(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    image_keys: Sequence[Hashable] | None = None,
    captions: Sequence[Hashable] | None = None,
    ks: Sequence[int] = KS,
) -> dict[str, float]:
    """Recall@k image->text and text->image, and mean recall@1, of N (image, caption) rows.

    ``image_emb``/``text_emb``: (N, D), row i is the i-th pair. ``image_keys``/``captions``: what makes
    two rows the same image / caption (default: every row distinct). Returns
    ``{"i2t_recall@k", "t2i_recall@k" for k in ks, "mean_recall@1"}``.
    """
    n = image_emb.shape[0]
    if text_emb.shape[0] != n or n == 0:
        raise ValueError(
            f"retrieval_metrics: need N >= 1 pairs; got {n} images and {text_emb.shape[0]} captions"
        )
    img_id, img_first = group_ids(image_keys if image_keys is not None else range(n))
    txt_id, txt_first = group_ids(captions if captions is not None else range(n))
    rel = torch.zeros(len(img_first), len(txt_first), dtype=torch.bool)
    rel[img_id, txt_id] = True
    imgs, txts = image_emb[img_first].cpu(), text_emb[txt_first].cpu()
    kmax = max(ks)
    _, i2t = top_k(imgs, txts, kmax)
    _, t2i = top_k(txts, imgs, kmax)
    out: dict[str, float] = {}
    for name, r in (("i2t", _recall(rel, i2t, ks)), ("t2i", _recall(rel.T.contiguous(), t2i, ks))):
        out.update({f"{name}_recall@{k}": v for k, v in r.items()})
    out["mean_recall@1"] = (out["i2t_recall@1"] + out["t2i_recall@1"]) / 2 if 1 in ks else float("nan")
    return out


def zero_shot_prompts(classes: Sequence[str], template: str = "a photo of {}") -> list[str]:
    """One prompt per class name (``template`` holds one ``{}``; other braces doubled)."""
    try:  # a probe: str.format's own errors ("Single '{' ...", KeyError 'x') name no fix
        ok = template.format("\0").count("\0") == 1
    except (ValueError, KeyError, IndexError, AttributeError, TypeError):
        ok = False
    if not ok:
        raise ValueError(
            f"--prompt-template must contain '{{}}' once (where the class name goes) and write any other "
            f"brace doubled ('{{{{' or '}}}}' for a literal one); got {template!r}"
        )
    return [template.format(c) for c in classes]


def zero_shot_accuracy(image_emb: torch.Tensor, class_emb: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images whose most similar class prompt (cosine) is their label; ``labels`` (N,) class
    indices into ``class_emb`` (C, D); rows labelled < 0 (no class) are left out."""
    keep = labels >= 0
    if not bool(keep.any()):
        return float("nan")
    _, idx = top_k(image_emb[keep], class_emb, 1)
    return float((idx[:, 0].cpu() == labels[keep].cpu()).float().mean())
