"""Causal language modelling (``--task causal_lm``): continue the text.

Columns: text only (no label; never auto-detected). Tokenization appends EOS when the tokenizer
did not and the text was not truncated. Labels: the input ids with padding set to -100 (unshifted;
the model shifts). Loss: the model's own loss (fastft's fused linear + cross-entropy when patched),
reduced as sum / ``num_items_in_batch``; with a teacher, the fused KD loss per token. Metrics:
loss, perplexity, token count; best by loss. Predict: ``generate`` continues each prompt row
(``--max-new-tokens``, ``--temperature`` (0 = greedy), ``--top-p``, ``--num-beams``).
"""

from __future__ import annotations

import torch

from fastft.train.tasks.base import IGNORE_INDEX, EvalBatch, LabelSpace, Task, model_inputs
from fastft.train.tasks.classification import kd_loss_sum


class CausalLM(Task):
    name = "causal_lm"
    uses_model_loss = True  # fastft.patch fuses its linear + cross-entropy
    distils = True
    problem_type = "causal_lm"
    auto_class = "AutoModelForCausalLM"
    needs_labels = False
    label_in_dataset = False
    fresh_head = False
    best_metric = "loss"
    lower_is_better = ("loss", "perplexity")
    predict_format = "jsonl"

    def claims_model(self, config):
        archs = getattr(config, "architectures", None) or []
        return any(a.endswith("ForCausalLM") or a.endswith("LMHeadModel") for a in archs)

    def encode_labels(self, values, num_labels, label2id):
        return values, LabelSpace(0)

    def tokenize(self, batch, tokenizer, text_col, pair_col, max_length):
        out = super().tokenize(batch, tokenizer, text_col, pair_col, max_length)
        eos = tokenizer.eos_token_id
        if eos is None:
            return out
        for i, ids in enumerate(out["input_ids"]):
            if len(ids) < max_length and (not ids or ids[-1] != eos):
                ids.append(eos)
                out["attention_mask"][i].append(1)
                if "token_type_ids" in out:
                    tt = out["token_type_ids"][i]
                    tt.append(tt[-1] if tt else 0)
        out["length"] = [len(x) for x in out["input_ids"]]
        return out

    def tokenize_key(self):
        return [True]

    def collate_labels(self, feats, padded, left):
        labels = padded["input_ids"].copy()
        labels[padded["attention_mask"] == 0] = IGNORE_INDEX  # padding is never a target
        return torch.from_numpy(labels)

    def count_items(self, batch):
        return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())

    def item_losses(self, logits, labels):
        return torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), reduction="none"
        )

    def loss(self, model, batch, n_items, *, teacher=None, cfg=None):
        inputs, labels = model_inputs(batch), batch["labels"]
        if teacher is None:
            # The model's own (possibly fastft-fused linear+CE) loss, reduced as sum / num_items_in_batch.
            return model(**inputs, labels=labels, num_items_in_batch=n_items, use_cache=False).loss
        logits = model(**inputs, use_cache=False).logits[:, :-1]
        with torch.no_grad():
            t_logits = teacher(**inputs, use_cache=False).logits[:, :-1]
        target = labels[:, 1:]
        return kd_loss_sum(logits.flatten(0, 1), t_logits.flatten(0, 1), target.flatten(), cfg) / n_items

    def check_teacher(self, teacher, model, space):
        if teacher.get_output_embeddings().weight.shape[0] != model.get_output_embeddings().weight.shape[0]:
            return "--teacher has a different vocabulary than --model; KD needs the same tokenizer"
        return None

    def model_kwargs(self, space):
        return {}

    def eval_batch(self, model, batch):
        labels = batch["labels"]
        if "repeat" in batch:  # shard-padding rows under torchrun: no target counts twice
            labels = labels.masked_fill(batch["repeat"][:, None].to(labels.device), IGNORE_INDEX)
        n = (labels[:, 1:] != IGNORE_INDEX).sum()
        out = model(**model_inputs(batch), labels=labels, num_items_in_batch=int(n), use_cache=False)
        loss_sum = (
            out.loss.double() * n if int(n) > 0 else torch.zeros((), dtype=torch.float64, device=n.device)
        )
        return EvalBatch(loss_sum, n.double(), {})

    def metrics(self, rows, mean_loss, count):
        from fastft.train.metrics import perplexity

        return {"loss": mean_loss, "perplexity": perplexity(mean_loss), "tokens": int(count)}

    def headline(self, test):
        if "perplexity" not in test:
            return None
        return f"TEST PERPLEXITY: {test['perplexity']:.3f}  loss: {test['loss']:.4f}"

    def describe(self, space):
        return self.problem_type

    def predict(self, model, tokenizer, ds, batches, *, device, text_columns, options):
        """Continue each prompt row with ``model.generate`` (prompts left-padded, batched)."""
        text_col = text_columns[0]
        prompts = [str(t) for t in ds[text_col]]
        kw = dict(
            max_new_tokens=options.max_new_tokens,
            num_beams=options.num_beams,
            pad_token_id=tokenizer.pad_token_id,
        )
        if options.temperature > 0:
            kw.update(do_sample=True, temperature=options.temperature, top_p=options.top_p)
        else:
            kw.update(do_sample=False)
        side, tokenizer.padding_side = tokenizer.padding_side, "left"
        records = []
        try:
            for s in range(0, len(prompts), options.batch_size):
                chunk = prompts[s : s + options.batch_size]
                enc = tokenizer(
                    chunk, return_tensors="pt", padding=True, truncation=True, max_length=options.max_length
                )
                enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
                with torch.no_grad():
                    out = model.generate(**enc, **kw)
                new = out[:, enc["input_ids"].shape[1] :]
                for i, text in enumerate(tokenizer.batch_decode(new, skip_special_tokens=True)):
                    rec = {c: ds[c][s + i] for c in text_columns}
                    rec["continuation"] = text
                    records.append(rec)
        finally:
            tokenizer.padding_side = side
        return records
