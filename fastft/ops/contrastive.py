"""Image-text contrastive losses: CLIP's symmetric InfoNCE and SigLIP's pairwise sigmoid loss.

Both take the towers' (unnormalised) embeddings and the model's learnable log-temperature, and work
on one process or on the global batch under ``torchrun`` (``gather=True``): embeddings are
all-gathered with gradients (:func:`fastft.ops.all_gather.all_gather_with_grad_offset`), each rank
scores its local rows against every rank's rows, and its positives sit at columns
``offset + arange(B_local)`` (``offset`` = rows held by earlier ranks). DDP's gradient averaging
then gives exactly the gradient of the global-batch loss (see the gather's docstring).

The similarity matrix and the losses are computed in fp32 whatever the embeddings' dtype: the
``B_local x B_global`` logits are tiny next to the towers, and the temperature (exp(t) up to 100)
would amplify bf16 rounding of the cosines.

Notation: x_i, y_j the L2-normalised image / text embeddings, s = exp(t) the scale, l_ij = s x_i.y_j.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fastft.ops.cross_entropy import cross_entropy

__all__ = ["clip_loss", "siglip_loss"]


def _check(image_emb: torch.Tensor, text_emb: torch.Tensor, name: str) -> None:
    if image_emb.dim() != 2 or text_emb.dim() != 2:
        raise ValueError(
            f"{name}: embeddings must be (B, D); got image {tuple(image_emb.shape)}, text {tuple(text_emb.shape)}"
        )
    if image_emb.shape != text_emb.shape:
        raise ValueError(
            f"{name}: image and text embeddings must have the same (B, D) shape (one caption per image); "
            f"got {tuple(image_emb.shape)} and {tuple(text_emb.shape)}"
        )
    if image_emb.shape[0] == 0:
        raise ValueError(f"{name}: empty batch")


def _normalise(emb: torch.Tensor) -> torch.Tensor:
    return F.normalize(emb.float(), dim=-1, eps=1e-12)


def _gather(x: torch.Tensor, gather: bool) -> tuple[torch.Tensor, int]:
    if not gather:
        return x, 0
    from fastft.ops.all_gather import all_gather_with_grad_offset

    return all_gather_with_grad_offset(x)


def clip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    *,
    fused: bool = True,
    gather: bool = False,
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: ``(CE(l, arange) + CE(l.T, arange)) / 2`` with ``l = exp(t) x y^T``.

    Args:
        image_emb, text_emb: ``(B, D)`` embeddings of matching pairs (row i of each is pair i), any
            float dtype; normalised here.
        logit_scale: the log-temperature t (0-dim or ``(1,)``, e.g. ``CLIPModel.logit_scale``); it
            gets its gradient. Not clamped here (open_clip clamps the parameter after each step).
        fused: both cross-entropies run as ONE call of fastft's fused CE over the stacked
            ``(2B, B)`` rows (same mean as the two halves' average); False: ``F.cross_entropy``.
        gather: under torchrun, score the local rows against the all-gathered global batch.
    Returns the fp32 loss, mean over this rank's 2B rows.

    Gradients (one process, B pairs; p = softmax(l, dim=1), q = softmax(l, dim=0), E = p + q - 2I):
        dL/dl_ij = E_ij / (2B)
        dL/dx_i  = s/(2B) sum_j E_ij y_j (then through the normalisation: (I - x x^T) / |img_i|)
        dL/dy_j  = s/(2B) sum_i E_ij x_i (likewise)
        dL/dt    = sum_ij dL/dl_ij * l_ij  (since dl/dt = l)
    The CE kernel forms dL/dl in its forward pass; autograd carries it through the matmul, the scale
    and the normalisation.
    """
    _check(image_emb, text_emb, "clip_loss")
    img, txt = _normalise(image_emb), _normalise(text_emb)
    img_all, offset = _gather(img, gather)
    txt_all, _ = _gather(txt, gather)
    scale = logit_scale.float().exp().reshape(())
    n = img.shape[0]
    target = torch.arange(offset, offset + n, device=img.device)
    # rows 0..n-1: image i against every caption; rows n..2n-1: caption i against every image.
    logits = scale * torch.cat([img @ txt_all.T, txt @ img_all.T], 0)
    target = torch.cat([target, target])
    if fused:
        return cross_entropy(logits, target, fp32_loss=True)
    return F.cross_entropy(logits, target)


def siglip_loss(
    image_emb: torch.Tensor,
    text_emb: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_bias: torch.Tensor,
    *,
    gather: bool = False,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023): ``-(1/B) sum_i sum_j log sigmoid(z_ij (l_ij + b))``.

    ``l_ij = exp(t) x_i.y_j``, b the learnable bias, z_ij = +1 for the pair (j is i's caption) and -1
    otherwise: summed over the captions j, averaged over the images i (as the paper and HF's
    ``SiglipModel(return_loss=True)`` define it). With ``gather=True`` the local images meet every
    rank's captions (the global B x B matrix, split by rows across ranks).

    Gradients (u_ij = z_ij (l_ij + b), sigma the logistic function):
        dL/dl_ij = -z_ij sigma(-u_ij) / B,   dL/db = sum_ij dL/dl_ij,   dL/dt = sum_ij dL/dl_ij l_ij,
        dL/dx_i = s sum_j dL/dl_ij y_j, dL/dy_j = s sum_i dL/dl_ij x_i (then the normalisation).
    """
    _check(image_emb, text_emb, "siglip_loss")
    img, txt = _normalise(image_emb), _normalise(text_emb)
    txt_all, offset = _gather(txt, gather)
    n = img.shape[0]
    logits = logit_scale.float().exp().reshape(()) * (img @ txt_all.T) + logit_bias.float().reshape(())
    sign = torch.full_like(logits, -1.0)
    rows = torch.arange(n, device=logits.device)
    sign[rows, rows + offset] = 1.0
    return -F.logsigmoid(sign * logits).sum() / n
