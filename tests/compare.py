"""The one shared comparison helper of the test-suite.

Every kernel test compares against a float64 torch reference computed on the same fresh
random inputs, with one of two rules:

* :func:`assert_close` -- the per-dtype tolerance table below (``TOL``), for fp32 and for
  checks where a fixed bound is meaningful.
* :func:`assert_within_torch_error` -- FlashAttention's low-precision rule: the kernel's
  max error against the float64 reference is at most ``factor`` (2) times the error that
  plain torch makes *in the same dtype* on the same inputs, plus a tiny floor for the case
  where torch happens to be exact.
"""

from __future__ import annotations

import torch

#: Per-dtype (atol, rtol) against a float64 reference.
TOL: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def randn(*shape: int, dtype=torch.float32, device="cpu", scale: float = 1.0, seed: int | None = None):
    """Fresh normal data (never zeros); a seed makes it reproducible."""
    g = torch.Generator(device="cpu")
    g.manual_seed(torch.seed() if seed is None else seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def max_err(actual: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64 on the CPU."""
    a = actual.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    if a.shape != r.shape:
        raise AssertionError(f"shape mismatch: {tuple(a.shape)} vs reference {tuple(r.shape)}")
    if a.numel() == 0:
        return 0.0
    return (a - r).abs().max().item()


def tol(dtype: torch.dtype, scale: float = 1.0) -> dict[str, float]:
    atol, rtol = TOL[dtype]
    return {"atol": atol * scale, "rtol": rtol * scale}


def assert_close(
    actual: torch.Tensor,
    ref: torch.Tensor,
    dtype: torch.dtype | None = None,
    *,
    scale: float = 1.0,
    name: str = "",
) -> None:
    """``actual`` matches the float64 ``ref`` within ``TOL[dtype]`` (times ``scale``)."""
    dtype = dtype or actual.dtype
    a = actual.detach().to("cpu", torch.float64)
    r = ref.detach().to("cpu", torch.float64)
    assert torch.isfinite(a).all() == torch.isfinite(r).all(), f"{name}: non-finite values differ"
    torch.testing.assert_close(a, r, **tol(dtype, scale), msg=lambda m: f"{name} ({dtype}): {m}")


def assert_within_torch_error(
    actual: torch.Tensor,
    torch_same_dtype: torch.Tensor,
    ref: torch.Tensor,
    *,
    factor: float = 2.0,
    name: str = "",
) -> None:
    """Low-precision rule: ``err(actual) <= factor * err(torch in that dtype) + floor``.

    ``ref`` is the float64 reference; ``torch_same_dtype`` is torch's own result computed in the
    kernel's dtype on the same inputs. The floor is a few ulps of the dtype at the reference's
    magnitude, so an exact torch result does not demand an exact kernel.
    """
    assert torch.isfinite(actual).all(), f"{name}: kernel output has non-finite values"
    err = max_err(actual, ref)
    base = max_err(torch_same_dtype, ref)
    dtype = actual.dtype if actual.is_floating_point() else torch.float32
    eps = torch.finfo(dtype).eps
    mag = max(1.0, ref.detach().abs().max().item()) if ref.numel() else 1.0
    floor = 4 * eps * mag
    assert err <= factor * base + floor, (
        f"{name}: kernel error {err:.3e} > {factor} x torch's {dtype} error {base:.3e} (+ floor {floor:.1e})"
    )
