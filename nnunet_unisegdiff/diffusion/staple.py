"""STAPLE (Warfield et al. 2004) label fusion in torch, vectorised over images, raters and pixels.

UniSegDiff fuses its 20 sampled masks with STAPLE inside every prediction, so this runs on the
prediction device with a handful of small tensor ops per iteration and no Python loop over
pixels, raters or images.

Model: pixel i has a hidden label y_i with prior g = P(y_i = 1); rater j reports D_ij with
sensitivity p_j = P(D=1 | y=1) and false-positive rate f_j = P(D=1 | y=0) (specificity 1 - f_j).
In log-odds the E-step is affine in the vote vector D_i:

    logit W_i = logit g + sum_j log((1-p_j)/(1-f_j)) + sum_j D_ij (logit p_j - logit f_j)

so W depends on a pixel only through its vote pattern, and the M-step needs only
sum_i W_i D_ij and sum_i (1-W_i) D_ij. The EM therefore runs on the U distinct patterns
(weighted by their pixel counts; U << P since samples mostly agree) instead of all P pixels:
one sort to find them, one small matmul per E-step and per M-step, then one gather back to pixels.

Two schedules:
- ``"paper"``: E-step first from p = 0.9, f = 0.1, fixed prior 0.5, 20 E-steps (the W of a
  20-iteration E/M loop; its last M-step would not change W, so it is skipped). The M-step adds one
  pseudo-pixel at (0.9, 0.1) (``pseudocount``): with a fixed prior of 0.5, plain EM on a stack with
  no consensus foreground (empty or near-empty samples, common for small lesions) drifts to
  p -> 0 and returns 0.5 everywhere; one pixel of prior mass prevents that and is negligible otherwise.
- ``"itk"``: ITK's ``STAPLEImageFilter``: W starts as the mean vote, the prior is the global mean
  vote times ``confidence_weight`` (computed once, never updated), each iteration is M-step then
  E-step, until every p_j and f_j moves by less than ``tol`` (or ``iterations`` is reached).
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import Tensor

__all__ = ["staple", "staple_batched", "staple_multiclass"]

_DEFAULT_ITERATIONS = {"paper": 20, "itk": 10_000}


def _vote_patterns(masks_bn: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Distinct vote patterns of each stack: bits (N, U) in dtype, batch id (U,), count (U,), inverse (B*P,)."""
    b, n = masks_bn.shape[:2]
    m = masks_bn.reshape(b, n, -1)  # (B, N, P)
    if m.dtype == torch.bool:
        m = m.view(torch.uint8)
    elif m.dtype == torch.uint8:
        m = m.clamp(max=1)
    else:
        m = (m != 0).view(torch.uint8)
    key_bits = n + max(b - 1, 0).bit_length()
    if key_bits <= 63:  # one integer key per pixel: batch id in the high bits, votes in the low N bits
        key_dtype = torch.int32 if key_bits <= 31 else torch.int64  # int32 sorts faster
        shifts = torch.arange(n, device=m.device, dtype=key_dtype)[:, None]  # (N, 1)
        codes = m.to(key_dtype).bitwise_left_shift_(shifts).sum(dim=1, dtype=key_dtype)  # (B, P), exact
        if b > 1:
            codes += (torch.arange(b, device=m.device, dtype=key_dtype) << n)[:, None]
        # torch.unique(return_inverse=True) computes the same, more slowly on CPU.
        sorted_codes, perm = torch.sort(codes.view(-1))
        keys, inv_sorted, counts = torch.unique_consecutive(sorted_codes, return_inverse=True, return_counts=True)
        inverse = torch.empty_like(inv_sorted).scatter_(0, perm, inv_sorted)
        bits = (keys >> shifts) & 1  # (N, U)
        batch = keys >> n  # (U,)
    else:  # very many raters: unique rows (slower)
        batch_col = torch.arange(b, device=m.device).view(b, 1, 1).expand(b, m.shape[2], 1)
        rows = torch.cat((batch_col, m.transpose(1, 2).to(torch.int64)), dim=2)  # (B, P, 1 + N)
        uniq, inverse, counts = torch.unique(rows.view(-1, n + 1), dim=0, return_inverse=True, return_counts=True)
        bits, batch = uniq[:, 1:].t(), uniq[:, 0]
    return bits.to(dtype), batch, counts, inverse


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device):
    """Run single-threaded on CPU: the EM's tensors are tiny (U x (N+1)) and the rest is a few
    memory-bound passes, so parallel regions (~50 per call) only add synchronisation, and on a busy
    machine each costs a scheduler time slice (benchmarks/README.md, section 3)."""
    n_threads = torch.get_num_threads()
    if device.type != "cpu" or n_threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n_threads)


@functools.lru_cache(maxsize=16)
def _llr_map(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(4N, 2N + 2) linear map from log Q (flattened (2, 2N)) to (+a, +c, -a, -c).

    a_j = log p_j - log(1-p_j) - log f_j + log(1-f_j) and c = sum_j log(1-p_j) - log(1-f_j), so the
    log-likelihood ratio of a vote pattern D is (a, c) . (D, 1); the negated copy gives 1 - W's log-odds.
    """
    m = torch.zeros(n + 1, 2, 2 * n, dtype=dtype, device=device)
    j = torch.arange(n, device=device)
    m[j, 0, j], m[j, 0, n + j], m[j, 1, j], m[j, 1, n + j] = 1.0, -1.0, -1.0, 1.0
    m[n, 0, n:], m[n, 1, n:] = 1.0, -1.0
    m = m.view(n + 1, 4 * n)
    return torch.cat((m, -m)).t().contiguous()


class _PatternEM:
    """EM on vote patterns with parameters Q (B, 2, 2N): Q[b, 0] = (p, 1 - p), Q[b, 1] = (f, 1 - f).

    Keeping 1 - p and 1 - f as their own entries lets them be floored at eps separately. The E-step is a clamp,
    a log, one small affine map to the per-stack weights (+a, +c; -a, -c) and one matmul over the
    patterns, giving the log-odds of W and of 1 - W at once; the M-step is one matmul and a division.
    Layouts are chosen for fast CPU GEMMs: patterns along the last (contiguous) axis.
    """

    def __init__(self, bits: Tensor, batch: Tensor, counts: Tensor, b: int, eps: float) -> None:
        n = bits.shape[0]
        dtype, dev = bits.dtype, bits.device
        self.b, self.n, self.eps = b, n, eps
        ones = torch.ones_like(bits[:1])
        self.bits1 = torch.cat((bits, ones))  # (N + 1, U): votes and a bias row
        self.wbits = self.bits1 * counts.to(dtype)  # (N + 1, U): pixel counts times (D, 1): M-step sums
        self.m2t = _llr_map(n, dtype, dev)
        if b > 1:
            self.onehot = (torch.arange(2 * b, device=dev)[:, None] // 2 == batch).to(dtype)  # (2B, U)
            self.rows = torch.stack((2 * batch, 2 * batch + 1))  # (2, U): own stack's (+, -) rows

    def e_step(self, q: Tensor, bias: Tensor) -> Tensor:
        """(2, U): W and 1 - W of each pattern; ``bias`` (B, 2N + 2) holds +-logit(prior) at the c slots."""
        b, n = self.b, self.n
        log_q = q.clamp_min(self.eps).log().view(b, 4 * n)
        coef = torch.addmm(bias, log_q, self.m2t).view(2 * b, n + 1)  # rows: stack 0 (+, -), stack 1 (+, -), ...
        logits = torch.mm(coef, self.bits1)  # (2B, U)
        if b > 1:
            logits = logits.gather(0, self.rows)
        return logits.sigmoid_()

    def m_step(self, ww: Tensor, q: Tensor, prior_q: Tensor, k: float, tiny: float) -> Tensor:
        """New Q from posteriors ``ww`` (2, U), plus ``k`` pseudo-pixels at the initial values (``prior_q``).

        ``k > 0`` is a Beta prior (MAP STAPLE): negligible for a real consensus, but it keeps p, f
        informative when the consensus holds (almost) no foreground or background, where plain EM drifts
        to p -> 0 and W -> prior everywhere. With ``k = 0`` a mass below ``tiny`` (the 0/0 that makes ITK
        return NaN) keeps the previous value instead.
        """
        if self.b > 1:  # each stack sums over its own patterns only
            ww = ww.repeat(self.b, 1) * self.onehot
        s = torch.mm(ww, self.wbits.t()).view(self.b, 2, -1)  # (B, 2, N + 1): sums of W D_j, W; (1-W) D_j, 1-W
        mass = s[..., -1:]  # (B, 2, 1)
        # sum W (1 - D_j) = sum W - sum W D_j: the rounding error (~1e-7 of the mass in float32) sits below eps.
        num = torch.cat((s[..., :-1], mass - s[..., :-1]), dim=-1)  # (B, 2, 2N)
        if k > 0:
            return (num + prior_q) / (mass + k)
        return torch.where(mass > tiny, num / mass.clamp_min(tiny), q)


def _run_em(
    em: _PatternEM, q: Tensor, bias: Tensor, prior_q: Tensor, k: float, n_iter: int, tiny: float, tol: float,
    ww0: Tensor | None,
) -> Tensor:
    """(2, U) final W, 1 - W. ``ww0 is None``: paper schedule, E-step first, exactly ``n_iter`` E-steps.
    Otherwise ITK's: M-step from ``ww0`` then E-step, until p and f move by less than ``tol``."""
    n = q.shape[-1] // 2
    if ww0 is None:
        for it in range(n_iter):
            ww = em.e_step(q, bias)
            if it + 1 < n_iter:
                q = em.m_step(ww, q, prior_q, k, tiny)
        return ww
    ww = ww0
    for it in range(n_iter):
        q_new = em.m_step(ww, q, prior_q, k, tiny)
        ww = em.e_step(q_new, bias)
        if it > 0 and (q_new[..., :n] - q[..., :n]).abs().max().item() < tol:
            break
        q = q_new
    return ww


def staple_batched(
    masks_bn: Tensor,
    *,
    sensitivity_init: float = 0.9,
    fpr_init: float = 0.1,
    prior: float = 0.5,
    iterations: int | None = None,
    mode: str = "paper",
    confidence_weight: float = 1.0,
    pseudocount: float | None = None,
    tol: float = 1e-7,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Binary STAPLE of B independent rater stacks ``(B, N, *spatial)`` (nonzero = foreground).

    Returns the posterior P(y=1) as ``(B, *spatial)`` in ``dtype``. ``iterations`` defaults to 20
    ("paper") or 10000 ("itk", which stops earlier on convergence). In "itk" mode ``prior``
    is ignored (ITK uses the mean vote) and ``sensitivity_init``/``fpr_init`` are only the fallback
    for unidentifiable parameters. ``pseudocount`` defaults to 1 ("paper") or 0 ("itk").
    All-empty stacks give 0, all-full stacks 1, never NaN.
    """
    n_iter, k = _resolve_schedule(masks_bn, mode, iterations, pseudocount)
    b, n = masks_bn.shape[:2]
    spatial = masks_bn.shape[2:]
    finfo = torch.finfo(dtype)
    eps = 16 * finfo.eps  # floor of p, f, 1 - p, 1 - f before the log
    tiny = finfo.tiny ** 0.5  # below this a sum of (1-)posteriors counts as empty (~1e-19 in float32)
    dev = masks_bn.device

    # nnU-Net predicts under fp16 autocast: the EM must run in ``dtype``.
    with torch.autocast(device_type=dev.type, enabled=False), _single_cpu_thread(dev):
        bits, batch, counts, inverse = _vote_patterns(masks_bn, dtype)  # (N, U), (U,), (U,), (B*P,)
        em = _PatternEM(bits, batch, counts, b, eps)
        init = torch.tensor([[sensitivity_init], [fpr_init]], dtype=dtype, device=dev)  # (2, 1): p, f
        q = torch.cat((init.expand(2, n), 1 - init.expand(2, n)), dim=1).expand(b, 2, 2 * n)  # (B, 2, 2N)
        if mode == "paper":
            g, ww0 = torch.full((b,), prior, dtype=dtype, device=dev), None
        else:  # ITK: the global prior and the initial W from the mean vote
            w0 = bits.mean(dim=0)  # (U,)
            votes = torch.zeros(b, dtype=dtype, device=dev).index_add_(0, batch, w0 * counts.to(dtype))
            g, ww0 = votes / spatial.numel() * confidence_weight, torch.stack((w0, 1 - w0))  # g: (B,)
        ww = _run_em(em, q, _prior_bias(g, n, eps), k * q[:1], k, n_iter, tiny, tol, ww0)  # (2, U)
        w = _unanimous_consensus(ww[0], bits, counts, spatial.numel())
        return w.index_select(0, inverse).view(b, *spatial)


def _resolve_schedule(masks_bn: Tensor, mode: str, iterations: int | None,
                      pseudocount: float | None) -> tuple[int, float]:
    """(EM iterations, pseudocount k) of a mode, after checking the arguments."""
    if mode not in _DEFAULT_ITERATIONS:
        raise ValueError(f"mode must be 'paper' or 'itk', got {mode!r}")
    if masks_bn.dim() < 3:
        raise ValueError(f"expected (B, N, *spatial), got shape {tuple(masks_bn.shape)}")
    n_iter = _DEFAULT_ITERATIONS[mode] if iterations is None else int(iterations)
    if n_iter < 1:
        raise ValueError("iterations must be >= 1")
    return n_iter, (1.0 if mode == "paper" else 0.0) if pseudocount is None else float(pseudocount)


def _prior_bias(g: Tensor, n: int, eps: float) -> Tensor:
    """(B, 2 * (N + 1)): +-logit(g) of the global prior g (B,) at the E-step's constant term."""
    logit_g = torch.logit(g.clamp(eps, 1 - eps))
    bias = torch.zeros(g.shape[0], 2, n + 1, dtype=g.dtype, device=g.device)
    bias[:, 0, n], bias[:, 1, n] = logit_g, -logit_g
    return bias.view(g.shape[0], -1)


def _unanimous_consensus(w: Tensor, bits: Tensor, counts: Tensor, n_pix: int) -> Tensor:
    """Unanimously empty / full stacks leave p (resp. f) unidentifiable: answer the obvious consensus
    exactly. w, counts: (U,) per vote pattern; bits: (N, U)."""
    alone = counts == n_pix  # (U,): the pattern covers its whole stack
    pop = bits.sum(dim=0)
    w = torch.where(alone & (pop == 0), 0.0, w)
    return torch.where(alone & (pop == bits.shape[0]), 1.0, w)


def staple(masks: Tensor, **kwargs) -> Tensor:
    """Binary STAPLE of one rater stack ``(N, *spatial)`` -> posterior P(y=1) ``(*spatial)``.

    Keyword arguments as in :func:`staple_batched` (``mode="paper"``: p=0.9, 1-specificity=0.1,
    prior 0.5, 20 iterations; ``mode="itk"``: SimpleITK's STAPLEImageFilter to convergence).
    """
    return staple_batched(masks.unsqueeze(0), **kwargs)[0]


def staple_multiclass(label_maps: Tensor, num_classes: int, *, batched: bool = False, **kwargs) -> Tensor:
    """Per-class one-vs-rest STAPLE, normalised over classes.

    ``(N, *spatial)`` integer label maps -> ``(num_classes, *spatial)`` probabilities summing to 1
    (or ``(B, N, *spatial)`` -> ``(B, num_classes, *spatial)`` with ``batched=True``). Classes are
    fused together as the batch dimension. Where every class posterior underflows to 0 the
    raters' vote fractions are used instead.
    """
    x = label_maps if batched else label_maps.unsqueeze(0)  # (B, N, *spatial)
    b, n = x.shape[:2]
    spatial = x.shape[2:]
    classes = torch.arange(num_classes, device=x.device).view(1, num_classes, 1, 1)
    onehot = x.reshape(b, 1, n, -1) == classes  # (B, C, N, P) bool
    post = staple_batched(onehot.reshape(b * num_classes, n, -1), **kwargs)  # (B*C, P)
    post = post.view(b, num_classes, -1)
    total = post.sum(dim=1, keepdim=True)  # (B, 1, P)
    tiny = torch.finfo(post.dtype).tiny
    votes = onehot.mean(dim=2, dtype=post.dtype)  # (B, C, P): fallback, sums to 1 wherever labels are in range
    out = torch.where(total > tiny, post / total.clamp_min(tiny), votes).reshape(b, num_classes, *spatial)
    return out if batched else out[0]
