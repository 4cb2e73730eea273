"""SVDs of weight deltas, the rank rules, and LoRA factors from a truncated SVD.

Which SVD where (all fp32):
- a delta given as factors up @ down (LoRA / LoCon inputs, and merges of them): exact SVD through QR of
  both factors (CholeskyQR2, Householder QR as the fallback) and an SVD of the small r x r core,
  O((out + in) r^2) instead of O(out in min(out, in));
- a dense delta when the whole spectrum is needed (dynamic rules, LoHa / LoKr / DoRA inputs):
  `torch.linalg.svd`, exact;
- a dense delta cut to a fixed rank (extract): `torch.svd_lowrank` (randomized, oversampled by 10 with
  `niter` power iterations), which is exact for deltas of rank <= q and near-optimal otherwise.
"""

from __future__ import annotations

import contextlib
import math

import torch

from sd_lora.errors import SdLoraError

__all__ = ["DYNAMIC_RULES", "factor_svd", "dense_svd", "randomized_svd", "choose_rank", "check_rule",
           "retained_fro", "to_lora_params"]

DYNAMIC_RULES = ("sv_ratio", "sv_fro", "sv_cumulative")
_EPS = 1e-6


@contextlib.contextmanager
def one_thread():
    """Small LAPACK calls (r x r SVD, Cholesky, triangular inverses) on one thread: with two, OpenMP's
    hand-off costs ~50x the work on a 2-core CPU (a 128 x 128 SVD: 85 ms instead of 1.2 ms)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def _inverse_lower(l: torch.Tensor) -> torch.Tensor:
    with one_thread():
        return torch.linalg.solve_triangular(l, torch.eye(l.shape[0], dtype=l.dtype), upper=False)


def _cholesky(g: torch.Tensor):
    with one_thread():
        return torch.linalg.cholesky_ex(g)


def _qr(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of a tall matrix: CholeskyQR2 (two Gram + Cholesky passes, BLAS-3, ~4x faster than Householder on
    a CPU; orthogonal to fp32 precision for well-conditioned factors, which is checked), falling back to
    `torch.linalg.qr` when the Gram matrix is singular or ill-conditioned (rank-deficient factors)."""
    if a.shape[0] >= a.shape[1]:
        l1, info = _cholesky(a.T @ a)
        if not info:
            q = a @ _inverse_lower(l1).T
            l2, info = _cholesky(q.T @ q)
            if not info:
                q = q @ _inverse_lower(l2).T
                # NaN compares False, so a failed pass falls back too
                if float((q.T @ q - torch.eye(q.shape[1])).abs().max()) < 1e-4:
                    return q, l2.T @ l1.T
    return torch.linalg.qr(a)


def factor_svd(up: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact thin SVD (U, S, Vh) of up @ down ([out, r] @ [r, in]) without forming the product."""
    with one_thread():  # r is small: every step is overhead-bound, and faster on one thread of a busy 2-core CPU
        qu, ru = _qr(up)
        qd, rd = _qr(down.T)
        u, s, vh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
        return qu @ u, s, vh @ qd.T


def dense_svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(matrix, full_matrices=False)


def randomized_svd(matrix: torch.Tensor, rank: int, niter: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-`rank`-oriented SVD: randomized with oversampling, or exact when that is as cheap."""
    q = min(rank + 10, *matrix.shape)
    if q >= min(matrix.shape) // 2:
        return dense_svd(matrix)
    u, s, v = torch.svd_lowrank(matrix, q=q, niter=niter)
    return u, s, v.T


def check_rule(rule: str | None, param: float | None) -> None:
    """Raise SdLoraError for an unknown rule or a parameter outside its meaningful range."""
    if rule is None:
        return
    if rule not in DYNAMIC_RULES:
        raise SdLoraError(f"unknown dynamic rule {rule!r}; expected one of {DYNAMIC_RULES}")
    if param is None or not math.isfinite(param):
        raise SdLoraError(f"--dynamic {rule} needs --param X")
    if rule == "sv_ratio" and param < 1:
        raise SdLoraError(f"--param {param} is out of range for sv_ratio: it keeps singular values >= max / X, "
                          "so X must be >= 1 (e.g. 2 or 10).")
    if rule in ("sv_fro", "sv_cumulative") and not 0 < param <= 1:
        raise SdLoraError(f"--param {param} is out of range for {rule}: a fraction in (0, 1] is needed (e.g. 0.9).")


def choose_rank(s: torch.Tensor, rule: str | None = None, param: float | None = None,
                rank: int | None = None) -> int:
    """New rank for singular values `s` (descending): a fixed `rank`, or the dynamic `rule` with `param`.

    sv_ratio: the singular values >= max / param; sv_fro: the smallest rank whose Frobenius norm is at least
    `param` of the whole; sv_cumulative: the smallest rank whose singular-value sum reaches `param` of the sum.
    Never more than len(s), never less than 1.
    """
    n = len(s)
    if n == 0:
        return 1
    if rule is None:
        return max(1, min(int(rank), n))
    s = s.double()
    if float(s[0]) <= 0:
        return 1
    if rule == "sv_ratio":
        k = int((s >= s[0] / param * (1 - _EPS)).sum())
    elif rule == "sv_fro":
        frac = torch.cumsum(s ** 2, 0) / torch.sum(s ** 2)
        k = int((frac < param ** 2 * (1 - _EPS)).sum()) + 1
    else:
        frac = torch.cumsum(s, 0) / torch.sum(s)
        k = int((frac < param * (1 - _EPS)).sum()) + 1
    return max(1, min(k, n))


def retained_fro(s: torch.Tensor, k: int) -> float:
    """Fraction of the Frobenius norm the first `k` singular values keep (1.0 for an all-zero delta)."""
    total = float(torch.sum(s.double() ** 2))
    return 1.0 if total <= 0 else math.sqrt(float(torch.sum(s[:k].double() ** 2)) / total)


def to_lora_params(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, k: int, shape: tuple[int, ...],
                   scale: float = 1.0, clamp_quantile: float | None = None) -> dict[str, torch.Tensor]:
    """LoRA / LoCon tensors of rank `k` for a weight of `shape`: up = U·S, down = Vh, alpha = scale·k.

    (U, S, Vh) is the SVD of the delta without its scale, so ΔW = (alpha / k)·up@down = scale·(rank-k
    truncation). `clamp_quantile` (as kohya's extract)
    clips both factors to that quantile of their absolute values.
    """
    k = max(1, min(k, len(s)))
    up = u[:, :k] * s[:k]
    down = vh[:k]
    if clamp_quantile is not None and clamp_quantile < 1:
        values = torch.cat([up.flatten(), down.flatten()]).abs()
        if values.numel() > 16_000_000:  # torch.quantile's limit: estimate from a strided sample
            values = values[:: values.numel() // 16_000_000 + 1]
        hi = float(torch.quantile(values, clamp_quantile))
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if len(shape) == 4:
        down = down.reshape(k, *shape[1:])
        up = up.reshape(shape[0], k, 1, 1)
    return {"lora_A": down.contiguous(), "lora_B": up.contiguous(), "alpha": torch.tensor(float(scale * k))}
