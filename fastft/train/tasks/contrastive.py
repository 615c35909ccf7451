"""Image-text contrastive fine-tuning (``--task contrastive``): CLIP and SigLIP.

Rows: an image (``--image-column``) and its caption (``--text-column``); optionally a class per image
(``--contrastive-class-column``). Model: ``AutoModel`` (CLIPModel / SiglipModel) with its
``AutoProcessor`` (image processor + tokenizer), saved with the model.

Loss: CLIP models the symmetric InfoNCE over the B x B image-caption logits through fastft's fused
cross-entropy (:func:`fastft.functional.clip_loss`), SigLIP models the pairwise sigmoid loss
(:func:`~fastft.functional.siglip_loss`), both with the model's learnable temperature (and bias).
Under torchrun the embeddings are all-gathered with gradients, so every rank scores its rows against
the global batch. With a class column a linear head on the (normalised) image embedding adds
``w * CE`` (``--class-loss-weight w``; 0: no head, the classes only serve zero-shot accuracy). The
head is a submodule ``fastft_class_head`` of the model, so it is checkpointed, resumed and saved
with it (``model.safetensors``; plain ``AutoModel.from_pretrained`` ignores those two tensors,
``fastft eval|predict`` put the head back).

Metrics: recall@1/5/10 image->text and text->image over the distinct images and captions of the split
(:mod:`fastft.train.retrieval`), mean recall@1 (the best metric), and with classes zero-shot accuracy
from ``--prompt-template`` prompts of the class names (``--zero-shot-classes`` renames them) plus the
class head's accuracy. Predict: for each image the top-k captions (``--captions-file`` or the file's
own captions), or with ``--direction t2i`` for each caption the top-k images.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import torch

from fastft.train.errors import ConfigError, DataError
from fastft.train.retrieval import (
    KS,
    group_ids,
    retrieval_metrics,
    top_k,
    zero_shot_accuracy,
    zero_shot_prompts,
)
from fastft.train.tasks.base import EvalBatch, LabelSpace, Task, model_inputs

__all__ = ["Contrastive", "HEAD"]

#: the class head's attribute on the model (and its state-dict prefix).
HEAD = "fastft_class_head"
_TWO_TOWER = ("clip", "siglip")


def _key(value: Any) -> int:
    """A stable 63-bit key of an image reference or caption (equal values -> equal keys)."""
    data = value if isinstance(value, (bytes, bytearray)) else str(value).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def _unwrap(model):
    from fastft.lora.inject import unwrap

    return unwrap(model)


def _is_siglip(model) -> bool:
    return getattr(_unwrap(model).config, "model_type", "") == "siglip"


def _features(out) -> torch.Tensor:
    """``get_text/image_features``' embeddings: an output object in transformers 5.2x, a tensor in 5.17."""
    return getattr(out, "pooler_output", out)


def _embed_dim(model) -> int:
    cfg = model.config
    return int(getattr(cfg, "projection_dim", None) or cfg.vision_config.hidden_size)


class Contrastive(Task):
    name = "contrastive"
    aliases = ("image_text", "clip", "siglip")
    problem_type = "image_text_contrastive"
    auto_class = "AutoModel"
    modality = "image_text"
    needs_labels = False
    fresh_head = True  # under LoRA the projections (and the class head) train in full
    batch_columns = ("image_ref", "text")
    text_columns = ("caption", "captions", "text", "report", "description", "sentence", "title")
    best_metric = "mean_recall@1"
    predict_format = "jsonl"
    # run options (set by configure)
    class_column: str | None = None
    class_loss_weight: float = 1.0
    zero_shot_classes: tuple[str, ...] | None = None
    prompt_template: str = "a photo of {}"
    max_length: int = 64
    #: the flag that names the class column in data errors (train: --contrastive-class-column)
    label_flag: str = "--label-column"

    # ---- options / data ----------------------------------------------------------------------------
    def configure(self, cfg) -> Task:
        col = getattr(cfg, "contrastive_class_column", None)
        if col and getattr(cfg, "label_column", None) not in (None, col):
            raise DataError(
                f"--label-column {cfg.label_column} and --contrastive-class-column {col} differ; pass only one"
            )
        classes = getattr(cfg, "zero_shot_classes", None)
        if isinstance(classes, str):
            classes = [c.strip() for c in classes.split(",") if c.strip()]
        if classes and not col:
            raise DataError(
                "--zero-shot-classes names the classes of --contrastive-class-column; pass that column too "
                "(it holds each image's class)"
            )
        other = copy.copy(self)
        other.class_column = col or None
        other.label_flag = "--contrastive-class-column" if col else "--label-column"
        other.needs_labels = other.named_labels = bool(col)
        other.label_columns = (col,) if col else ()
        other.class_loss_weight = float(getattr(cfg, "class_loss_weight", 1.0))
        other.zero_shot_classes = tuple(classes) if classes else None
        other.prompt_template = getattr(cfg, "prompt_template", None) or self.prompt_template
        other.max_length = int(getattr(cfg, "max_length", 64) or 64)
        try:  # a bad template: one line, before any work
            zero_shot_prompts(["x"], other.prompt_template)
        except ValueError as e:
            raise DataError(str(e)) from None
        if other.class_loss_weight < 0:
            raise DataError(f"--class-loss-weight must be >= 0 (got {other.class_loss_weight})")
        return other

    def for_inference(self, saved: dict, *, images_only: bool = False) -> Contrastive:
        """This task for ``fastft eval|predict`` of a saved model: the run's options from its
        ``train_config.json`` (``saved``); ``images_only``: rows need no caption (predict with
        ``--captions-file``)."""
        import argparse

        keys = (
            "contrastive_class_column",
            "class_loss_weight",
            "zero_shot_classes",
            "prompt_template",
            "max_length",
        )
        other = self.configure(
            argparse.Namespace(**{k: saved.get(k) for k in keys if saved.get(k) is not None})
        )
        if images_only:
            other.modality, other.batch_columns = "image", ("image_ref",)
        other.label_flag = "--label-column"  # eval/predict name the class column with --label-column
        return other

    def load_preprocessor(self, path: str, model_config):
        mt = getattr(model_config, "model_type", None)
        if (
            getattr(model_config, "vision_config", None) is None
            or getattr(model_config, "text_config", None) is None
        ):
            raise ConfigError(
                f"--model {path} is a {mt} model, not an image-text model; --task contrastive needs a CLIP "
                "or SigLIP model with both towers, e.g. openai/clip-vit-base-patch32"
            )
        from transformers import AutoProcessor

        try:
            proc = AutoProcessor.from_pretrained(path, trust_remote_code=False)
        except Exception as e:  # noqa: BLE001
            from fastft.train.errors import first_line

            raise ConfigError(
                f"cannot load a processor from {path!r} ({first_line(e, 160)}); the model folder needs its "
                "tokenizer and preprocessor_config.json (save the CLIPProcessor with the model)"
            ) from None
        positions = getattr(model_config.text_config, "max_position_embeddings", None)
        tok = getattr(proc, "tokenizer", None)
        if (
            positions
            and tok is not None
            and not 0 < int(getattr(tok, "model_max_length", 0) or 0) <= positions
        ):
            tok.model_max_length = int(positions)  # captions never outgrow the text tower's positions
        if not hasattr(proc, "tokenizer") or not hasattr(proc, "image_processor"):
            raise ConfigError(
                f"the processor of {path!r} lacks a tokenizer or an image processor; pass a CLIP/SigLIP folder"
            )
        return proc

    def claims_model(self, config):
        archs = getattr(config, "architectures", None) or []
        return getattr(config, "model_type", None) in _TWO_TOWER and not any("For" in a for a in archs)

    def encode_labels(self, values, num_labels, label2id):
        if not self.class_column:
            return [], LabelSpace(0)
        from fastft.train.tasks.classification import Classification

        return Classification().encode_labels(values, num_labels, label2id)

    def model_kwargs(self, space: LabelSpace) -> dict[str, Any]:
        if not space.label2id:
            return {}
        return {"label2id": dict(space.label2id), "id2label": {int(k): v for k, v in space.id2label.items()}}

    def adapt_model(self, model, space: LabelSpace):
        """Attach the class head (``--contrastive-class-column`` with a weight > 0)."""
        if self.class_column and self.class_loss_weight > 0 and space.num_labels and not hasattr(model, HEAD):
            model.add_module(HEAD, torch.nn.Linear(_embed_dim(model), space.num_labels))
        return model

    def attach_saved_head(self, model, folder: str):
        """``fastft eval|predict``: put the class head saved in ``folder/model.safetensors`` back on the
        model (``AutoModel.from_pretrained`` skips those tensors), so eval scores like training did."""
        import os

        from safetensors import safe_open

        path = os.path.join(folder, "model.safetensors")
        if not os.path.isfile(path) or hasattr(model, HEAD):
            return model
        with safe_open(path, framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(HEAD + ".")]
            if not keys:
                return model
            sd = {k[len(HEAD) + 1 :]: f.get_tensor(k) for k in keys}
        head = torch.nn.Linear(sd["weight"].shape[1], sd["weight"].shape[0])
        head.load_state_dict(sd)
        model.add_module(HEAD, head.to(next(model.parameters()).device))
        return model

    def collate_inputs(self, images, feats, processor):
        from fastft.train.vision import pixel_values

        if self.modality == "image":  # predict with --captions-file: images only
            return {"pixel_values": pixel_values(processor, images)}

        tok = processor.tokenizer
        texts = [str(t) for t in feats["text"]]
        siglip = type(processor).__name__.lower().startswith("siglip")
        limit = getattr(tok, "model_max_length", None)
        length = min(self.max_length, limit) if isinstance(limit, int) and limit > 0 else self.max_length
        # SigLIP was trained on max-length padded text without a mask (it pools the last position)
        enc = tok(texts, padding="max_length" if siglip else True, truncation=True, max_length=length,
                  return_tensors="pt")  # fmt: skip
        out = {"pixel_values": pixel_values(processor, images), "input_ids": enc["input_ids"]}
        if not siglip and "attention_mask" in enc:
            out["attention_mask"] = enc["attention_mask"]
        out["image_key"] = torch.tensor([_key(r) for r in feats["image_ref"]], dtype=torch.long)
        out["caption_key"] = torch.tensor([_key(t) for t in texts], dtype=torch.long)
        return out

    def collate_labels(self, feats, padded, left):
        if "labels" in feats:
            return torch.tensor(feats["labels"], dtype=torch.long)
        return torch.full((len(feats["image_ref"]),), -1, dtype=torch.long)  # no classes: scored by retrieval

    # ---- loss ---------------------------------------------------------------------------------------
    def item_losses(self, logits, labels):
        raise NotImplementedError("the contrastive loss is per batch, not per item")

    def run_warnings(self, cfg, world):
        # the InfoNCE / sigmoid loss is per micro-batch (gathered over ranks): accumulation adds
        # steps, not negatives (no GradCache-style embedding cache)
        if cfg.grad_accum <= 1:
            return []
        return [
            f"warning: contrastive loss: negatives come from each micro-batch of {cfg.batch_size * world} "
            "rows; --grad-accum does not add negatives: raise --batch-size instead"
        ]

    def fused_parts(self, patched, model, cfg):
        # CLIP's InfoNCE goes through the fused CE; SigLIP's sigmoid loss is plain torch
        parts = super().fused_parts(patched, model, cfg)
        if not _is_siglip(_unwrap(model)):
            parts.append("contrastive cross-entropy loss")
        if getattr(_unwrap(model), HEAD, None) is not None:
            parts.append("class-head cross-entropy loss")
        return parts

    def loss(self, model, batch, n_items, *, teacher=None, cfg=None):
        fused = True if cfg is None else bool(cfg.fused)
        loss, ce, *_ = _losses(self, model, batch, fused)
        if ce is not None:
            loss = loss + self.class_loss_weight * ce
        # the loss of this micro-batch, weighted by its share of the accumulated batch
        return loss * (int(batch["input_ids"].shape[0]) / n_items)

    # ---- evaluation ---------------------------------------------------------------------------------
    def eval_batch(self, model, batch) -> EvalBatch:
        loss, ce, img, txt, logits = _losses(self, model, batch)
        if ce is not None:
            loss = loss + self.class_loss_weight * ce
        keep = (
            ~batch["repeat"]
            if "repeat" in batch
            else torch.ones(len(img), dtype=torch.bool, device=img.device)
        )
        n = keep.sum().double()
        rows = {
            "image_emb": img.float(),
            "text_emb": txt.float(),
            "image_key": batch["image_key"],
            "caption_key": batch["caption_key"],
            "labels": batch["labels"],
        }
        if logits is not None:
            rows["class_logits"] = logits
        return EvalBatch(loss.double() * n, n, rows)

    def metrics(self, rows, mean_loss, count):
        return self.model_metrics(None, rows, mean_loss, count)

    def model_metrics(self, model, rows, mean_loss, count):
        m: dict[str, Any] = {"loss": mean_loss}
        m.update(
            retrieval_metrics(
                rows["image_emb"],
                rows["text_emb"],
                rows["image_key"].tolist(),
                rows["caption_key"].tolist(),
                KS,
            )
        )
        labels = rows["labels"].cpu()
        if model is not None and bool((labels >= 0).any()):
            names = _class_names(self, _unwrap(model))
            if names:
                cls = _class_embeddings(self, _unwrap(model), names, rows["image_emb"].device)
                m["zero_shot_accuracy"] = zero_shot_accuracy(rows["image_emb"], cls, labels)
        if "class_logits" in rows:
            keep = labels >= 0
            pred = rows["class_logits"].argmax(-1).cpu()
            m["class_accuracy"] = (
                float((pred[keep] == labels[keep]).float().mean()) if keep.any() else float("nan")
            )
        return m

    def headline(self, test):
        if not test:
            return None
        line = (
            f"test mean recall@1 {test['mean_recall@1']:.4f} (image->text {test['i2t_recall@1']:.4f}, "
            f"text->image {test['t2i_recall@1']:.4f}; recall@5 {test['i2t_recall@5']:.4f} / {test['t2i_recall@5']:.4f})"
        )
        if "zero_shot_accuracy" in test:
            line += f", zero-shot accuracy {test['zero_shot_accuracy']:.4f}"
        return line

    def describe(self, space):
        extra = (
            f", {space.num_labels} classes (class loss weight {self.class_loss_weight:g})"
            if space.num_labels
            else ""
        )
        return f"image-text contrastive (CLIP: InfoNCE, SigLIP: sigmoid loss){extra}"

    # ---- prediction ---------------------------------------------------------------------------------
    def predict(self, model, tokenizer, ds, batches, *, device, text_columns, options):
        return predict_retrieval(self, model, tokenizer, ds, batches, device=device, options=options)


def _losses(task: Contrastive, model, batch, fused: bool = True):
    """(contrastive loss, class CE or None, image embeddings, text embeddings, class logits)."""
    from fastft.functional import clip_loss, cross_entropy, siglip_loss

    out = model(**model_inputs(batch))
    raw = _unwrap(model)
    img, txt = out.image_embeds, out.text_embeds
    if _is_siglip(raw):
        loss = siglip_loss(img, txt, raw.logit_scale, raw.logit_bias, gather=True)
    else:
        loss = clip_loss(img, txt, raw.logit_scale, fused=fused, gather=True)
    head = getattr(raw, HEAD, None)
    logits = ce = None
    if head is not None:
        logits = head(img.to(head.weight.dtype)).float()
        labels = batch["labels"]
        ce = (cross_entropy if fused else torch.nn.functional.cross_entropy)(logits, labels, ignore_index=-1)
    return loss, ce, img, txt, logits


def _class_names(task: Contrastive, model) -> list[str]:
    """The class names the zero-shot prompts name: the model's labels, or ``--zero-shot-classes``."""
    id2label = {int(k): v for k, v in (getattr(model.config, "id2label", None) or {}).items()}
    names = [str(id2label[i]) for i in sorted(id2label)]
    if task.zero_shot_classes:
        if len(task.zero_shot_classes) != len(names):
            raise DataError(
                f"--zero-shot-classes has {len(task.zero_shot_classes)} names but the class column has "
                f"{len(names)} classes ({', '.join(names[:6])}); give one name per class, in that order"
            )
        names = list(task.zero_shot_classes)
    return names


@torch.no_grad()
def _class_embeddings(task: Contrastive, model, names: list[str], device) -> torch.Tensor:
    """Text embeddings of the class prompts (the model's own processor, from its folder)."""
    proc = _processor(model.config._name_or_path)
    siglip = _is_siglip(model)
    enc = proc.tokenizer(zero_shot_prompts(names, task.prompt_template), return_tensors="pt",
                         padding="max_length" if siglip else True, truncation=True, max_length=task.max_length)  # fmt: skip
    kw = {"input_ids": enc["input_ids"].to(device)}
    if not siglip and "attention_mask" in enc:
        kw["attention_mask"] = enc["attention_mask"].to(device)
    out = model.get_text_features(**kw)
    return _features(out).float()


_PROCESSORS: dict[str, Any] = {}


def _processor(path: str):
    if path not in _PROCESSORS:
        from transformers import AutoProcessor

        _PROCESSORS[path] = AutoProcessor.from_pretrained(path, trust_remote_code=False)
    return _PROCESSORS[path]


def read_captions(path: str) -> list[str]:
    """Candidate captions: a .txt file (one per line) or a csv/tsv/jsonl with a caption column."""
    import os

    if not os.path.isfile(path):
        raise ConfigError(
            f"--captions-file {path}: file not found; pass a .txt (one caption per line) or a csv"
        )
    if path.endswith(".txt"):
        with open(path, encoding="utf-8") as fh:
            caps = [ln.strip() for ln in fh if ln.strip()]
    else:
        from fastft.train.data.sources import load_file

        ds = load_file(path, None, "--captions-file", None)
        col = next((c for c in Contrastive.text_columns if c in ds.column_names), None)
        if col is None:
            raise DataError(
                f"--captions-file {path}: no caption column; columns are: {', '.join(ds.column_names)} "
                f"(name it one of {', '.join(Contrastive.text_columns)})"
            )
        caps = [str(c) for c in ds[col] if c is not None and str(c).strip()]
    if not caps:
        raise DataError(f"--captions-file {path} has no captions")
    return list(dict.fromkeys(caps))


@torch.no_grad()
def predict_retrieval(task, model, processor, ds, batches, *, device, options) -> list[dict]:
    """Top-k captions per image (``--direction i2t``, default) or top-k images per caption (``t2i``)."""
    k = int(getattr(options, "top_k", None) or 5)
    direction = (getattr(options, "direction", None) or "i2t").lower()
    if direction not in ("i2t", "t2i"):
        raise ConfigError(
            f"--direction {direction}: use i2t (captions per image) or t2i (images per caption)"
        )
    images = []
    for batch in batches:
        out = model.get_image_features(pixel_values=batch["pixel_values"].to(device))
        images.append(_features(out).float().cpu())
    img = torch.cat(images)
    shown = ds["image"] if "image" in ds.column_names else [str(i) for i in range(len(ds))]
    path = getattr(options, "captions_file", None)
    if not path and "text" not in ds.column_names:
        raise ConfigError("pass --captions-file (the candidate captions) or a --file with a caption column")
    captions = read_captions(path) if path else list(dict.fromkeys(str(t) for t in ds["text"]))
    txt = _text_embeddings(task, model, processor, captions, device)
    if direction == "i2t":
        scores, idx = top_k(img, txt, k)
        return [
            {"image": shown[i], "captions": [captions[j] for j in idx[i].tolist()],
             "scores": [round(float(s), 6) for s in scores[i]]}
            for i in range(len(img))
        ]  # fmt: skip
    ids, first = group_ids(shown)  # the same image listed twice is one candidate
    scores, idx = top_k(txt, img[first], k)
    return [
        {"caption": c, "images": [shown[first[j]] for j in idx[i].tolist()],
         "scores": [round(float(s), 6) for s in scores[i]]}
        for i, c in enumerate(captions)
    ]  # fmt: skip


def _text_embeddings(task, model, processor, captions: list[str], device, batch: int = 256) -> torch.Tensor:
    siglip = _is_siglip(model)
    out = []
    for s in range(0, len(captions), batch):
        enc = processor.tokenizer(captions[s : s + batch], return_tensors="pt", truncation=True,
                                  padding="max_length" if siglip else True, max_length=task.max_length)  # fmt: skip
        kw = {"input_ids": enc["input_ids"].to(device)}
        if not siglip and "attention_mask" in enc:
            kw["attention_mask"] = enc["attention_mask"].to(device)
        o = model.get_text_features(**kw)
        out.append(_features(o).float().cpu())
    return torch.cat(out) if out else torch.empty(0)
