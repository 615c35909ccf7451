"""Fine-tuning strategies as data: which parameters train, and at which learning rate.

Everything is derived from the family table (:mod:`fastft.nn.families`): embeddings,
the list of transformer blocks, the final norm and the task heads. No per-model code.

Layer groups, top-down (index 0 is trained first by gradual unfreezing and gets the full LR
under layer-wise LR decay):

    0: task heads (+ anything not in the backbone's embeddings/blocks/final norm)
    1: final norm / pooler + top block
    2 .. L: the blocks below, one group each
    L+1: embeddings

Two-tower models (CLIP, SigLIP: the family row's ``towers``) count depths per tower: each tower's
top block is depth 1 and its embeddings depth L_tower+1, so LLRD decays within each tower and
gradual unfreezing opens both towers' top blocks together. The projections and the temperature sit
at depth 0 with the heads. ``--freeze-tower text|vision`` (:func:`apply_freeze_tower`) freezes one
tower whole, its projection included (open_clip's "lock" of a tower).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from fastft.nn.families import Family, family_of, get_path, tower_blocks, towers

__all__ = [
    "LoopHook",
    "loop_hook",
    "layer_groups",
    "param_depths",
    "apply_freeze",
    "apply_freeze_tower",
    "TOWERS",
    "apply_head_only",
    "apply_gradual",
    "gradual_groups_unfrozen",
    "param_groups",
    "no_decay",
    "trainable_names",
]


#: task heads of a model fastft has no family row for (HF's usual names).
DEFAULT_HEADS = ("classifier", "score")


def _family(model: nn.Module) -> Family:
    fam = family_of(model)
    if fam is None:
        mt = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"strategies need a family row for model_type {mt!r}; use --strategy full or lora, "
            "or add the family to fastft/nn/families.py"
        )
    return fam


def _prefixed(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return name
    raise ValueError("module not found in model")


def param_depths(model: nn.Module) -> dict[str, int]:
    """``{param name: depth}``: 0 = heads/other, 1 = top block (+final norm), ..., L+1 = embeddings
    (per tower for two-tower models)."""
    fam = _family(model)
    roots = towers(model, fam)
    owner: dict[int, int] = {}
    for tower, layers in tower_blocks(model, fam).items():
        n = len(layers)
        for i, blk in enumerate(layers):
            for p in blk.parameters():
                owner[id(p)] = n - i
        for path in fam.final_norm:
            m = get_path(roots[tower], path)
            if m is not None:
                for p in m.parameters():
                    owner.setdefault(id(p), 1)
        for path in fam.embeddings:
            m = get_path(roots[tower], path)
            if m is not None:
                for p in m.parameters():
                    owner.setdefault(id(p), n + 1)
    # Heads and anything unknown sit at depth 0; a tied LM head (GPT-2 lm_head = wte) is reported once
    # by named_parameters, under the embedding name, so it follows the embeddings.
    return {name: owner.get(id(p), 0) for name, p in model.named_parameters()}


def layer_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names per group, top-down (see module docstring)."""
    depths = param_depths(model)
    n = max(depths.values(), default=0)
    groups: list[list[str]] = [[] for _ in range(n + 1)]
    for name, d in depths.items():
        groups[d].append(name)
    return groups


def _set(model: nn.Module, trainable: Iterable[str] | None, frozen: Iterable[str] | None = None) -> None:
    """Freeze everything except ``trainable`` (or freeze exactly ``frozen``)."""
    if trainable is not None:
        keep = set(trainable)
        for name, p in model.named_parameters():
            p.requires_grad_(name in keep)
    if frozen is not None:
        drop = set(frozen)
        for name, p in model.named_parameters():
            if name in drop:
                p.requires_grad_(False)


def apply_freeze(model: nn.Module, n_layers: int) -> None:
    """Freeze the embeddings and the bottom ``n_layers`` blocks (of each tower); everything else trains."""
    fam = _family(model)
    roots = towers(model, fam)
    frozen: set[int] = set()
    for tower, layers in tower_blocks(model, fam).items():
        if n_layers > len(layers):
            what = f"the {tower} tower's" if tower else "the model's"
            raise ValueError(
                f"--freeze-layers {n_layers} > {what} {len(layers)} blocks; pass at most {len(layers)}"
            )
        for blk in layers[:n_layers]:
            frozen |= {id(p) for p in blk.parameters()}
        for path in fam.embeddings:
            m = get_path(roots[tower], path)
            if m is not None:
                frozen |= {id(p) for p in m.parameters()}
    _set(model, None, [name for name, p in model.named_parameters() if id(p) in frozen])


#: ``--freeze-tower`` values.
TOWERS = ("text", "vision")


def tower_param_names(model: nn.Module, tower: str) -> list[str]:
    """Names of the parameters of one tower of a two-tower model, its projection included."""
    fam = _family(model)
    rows = {name: (path, proj) for name, path, proj in fam.towers}
    if tower not in rows:
        have = ", ".join(rows) or "none: it is not a two-tower model"
        raise ValueError(f"--freeze-tower {tower}: the model's towers are {have}")
    roots = towers(model, fam)
    ids = {id(p) for p in roots[tower].parameters()}
    proj = get_path(model, rows[tower][1]) if rows[tower][1] else None
    if proj is not None:
        ids |= {id(p) for p in proj.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in ids]


def apply_freeze_tower(model: nn.Module, tower: str) -> None:
    """Freeze one tower (``"text"`` or ``"vision"``) whole, its projection included; the other tower,
    the temperature (and any task head) train as before."""
    _set(model, None, tower_param_names(model, tower))


def apply_head_only(model: nn.Module) -> None:
    """Only the task heads train (feature extraction)."""
    fam = _family(model)
    names: list[str] = []
    for head in fam.heads:
        m = get_path(model, head)
        if m is not None:
            prefix = _prefixed(model, m)
            names += [f"{prefix}.{n}" for n, _ in m.named_parameters()]
    present = {n for n, _ in model.named_parameters()}
    names = [n for n in names if n in present]
    if not names:
        raise ValueError(f"head_only: no task head ({', '.join(fam.heads)}) found on {type(model).__name__}")
    _set(model, names)


def train_heads(model: nn.Module) -> None:
    """Make the task heads (the family table's ``heads``) trainable, e.g. a new classifier under LoRA."""
    fam = family_of(model)
    for head in fam.heads if fam else DEFAULT_HEADS:
        m = get_path(model, head)
        if m is not None:
            for p in m.parameters():
                p.requires_grad_(True)


def gradual_groups_unfrozen(step: int, epoch: int, unfreeze_every: int, n_groups: int) -> int:
    """How many top-down groups are trainable at ``step`` / ``epoch``: 1 at the start, +1 per period."""
    k = (step // unfreeze_every) if unfreeze_every > 0 else epoch
    return min(n_groups, 1 + k)


def apply_gradual(model: nn.Module, n_unfrozen: int, already_frozen: Iterable[str] = ()) -> None:
    """Groups ``0..n_unfrozen-1`` train, the rest are frozen (``already_frozen`` stay frozen)."""
    groups = layer_groups(model)
    keep = {n for g in groups[:n_unfrozen] for n in g} - set(already_frozen)
    _set(model, keep)


class LoopHook:
    """What a strategy does during the loop, called by it with the raw model and the ``TrainState``:
    :meth:`epoch_start` before each epoch, :meth:`step_start` before each optimizer step. No-op here."""

    def epoch_start(self, model: nn.Module, state) -> None:
        pass

    def step_start(self, model: nn.Module, state) -> None:
        pass


class GradualUnfreeze(LoopHook):
    """``--strategy gradual``: opens one more top-down group per epoch, or per ``--unfreeze-every``
    steps; ``state.unfrozen_groups`` records it (checkpoints, exact resume)."""

    def __init__(self, unfreeze_every: int, n_groups: int, always_frozen: Iterable[str] = ()) -> None:
        self.unfreeze_every, self.n_groups, self.always_frozen = unfreeze_every, n_groups, always_frozen

    def epoch_start(self, model: nn.Module, state) -> None:
        k = gradual_groups_unfrozen(state.global_step, state.epoch, self.unfreeze_every, self.n_groups)
        if k != state.unfrozen_groups:
            apply_gradual(model, k, self.always_frozen)
            state.unfrozen_groups = k

    def step_start(self, model: nn.Module, state) -> None:
        if self.unfreeze_every:
            self.epoch_start(model, state)


def loop_hook(cfg, n_groups: int, always_frozen: Iterable[str] = ()) -> LoopHook:
    """The strategy's :class:`LoopHook` for this config."""
    if cfg.strategy == "gradual":
        return GradualUnfreeze(cfg.unfreeze_every, n_groups, always_frozen)
    return LoopHook()


def no_decay(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay: biases and norm (LayerNorm/RMSNorm) weights."""
    out: set[str] = set()
    for mname, m in model.named_modules():
        is_norm = isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "norm" in type(m).__name__.lower()
        for pname, p in m.named_parameters(recurse=False):
            full = f"{mname}.{pname}" if mname else pname
            if is_norm or pname.endswith("bias") or p.ndim < 2:
                out.add(full)
    # named_parameters() de-duplicates tied weights; keep only names it reports.
    present = {n for n, _ in model.named_parameters()}
    return out & present


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_lr_decay: float = 1.0) -> list[dict]:
    """Optimizer param groups: (depth, decay / no-decay) with ``lr * layer_lr_decay ** depth``.

    Every parameter is included, frozen or not, so gradual unfreezing only flips ``requires_grad``
    (a parameter without a gradient is skipped by AdamW) and the optimizer state layout never changes,
    which keeps checkpoints loadable at any point of the schedule. Each group carries ``name`` and
    ``param_names`` (for logs and tests).
    """
    depths = param_depths(model) if layer_lr_decay != 1.0 else {n: 0 for n, _ in model.named_parameters()}
    nd = no_decay(model)
    buckets: dict[tuple[int, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, p in model.named_parameters():
        buckets.setdefault((depths[name], name in nd), []).append((name, p))
    groups = []
    for (depth, is_nd), items in sorted(buckets.items()):
        groups.append(
            {
                "params": [p for _, p in items],
                "param_names": [n for n, _ in items],
                "lr": lr * layer_lr_decay**depth,
                "weight_decay": 0.0 if is_nd else weight_decay,
                "name": f"depth{depth}-{'no_decay' if is_nd else 'decay'}",
            }
        )
    return groups


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}
