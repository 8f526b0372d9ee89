"""STAPLE (Warfield et al. 2004) label fusion in torch, vectorised over images, raters and pixels.

UniSegDiff fuses its 20 sampled masks with STAPLE inside every prediction, so this runs on the
prediction device, in a fixed number of batched matrix products, with no per-pixel Python.

Model: pixel i has a hidden label y_i with prior g = P(y_i = 1); rater j reports D_ij with
sensitivity p_j = P(D=1 | y=1) and false-positive rate f_j = P(D=1 | y=0) (specificity 1 - f_j).
In log-odds the E-step is affine in D, so one ``baddbmm`` computes it for all pixels:

    logit W_i = logit g + sum_j log((1-p_j)/(1-f_j)) + sum_j D_ij (logit p_j - logit f_j)

and the M-step needs only sum_i W_i D_ij and sum_i (1-W_i) D_ij: one ``bmm``.

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

import torch
from torch import Tensor

__all__ = ["staple", "staple_batched", "staple_multiclass"]

_DEFAULT_ITERATIONS = {"paper": 20, "itk": 10_000}


def _m_step(
    d: Tensor, w: Tensor, w_neg: Tensor, p: Tensor, f: Tensor, init: Tensor, k: float, tiny: float
) -> tuple[Tensor, Tensor]:
    """p_j = sum W D_j / sum W, f_j = sum (1-W) D_j / sum (1-W), each plus ``k`` pseudo-pixels at ``init``.

    ``k > 0`` is a Beta prior at the initial (p, f) (MAP STAPLE): negligible for a real consensus,
    but it keeps p, f informative when the consensus holds (almost) no foreground or background, where
    plain EM drifts to p -> 0 and W -> prior everywhere. With ``k = 0`` a sum below ``tiny`` (0/0, what
    makes ITK return NaN) keeps the previous value instead.
    """
    ww = torch.stack((w, w_neg), dim=-1)  # (B, P, 2): W and 1 - W (1 - W from sigmoid(-L): no cancellation)
    s = torch.bmm(d, ww)  # (B, N, 2): sum_i W_i D_ij, sum_i (1 - W_i) D_ij
    mass = ww.sum(dim=1, keepdim=True) + k  # (B, 1, 2)
    prev = torch.stack((p, f), dim=-1)  # (B, N, 2)
    new = torch.where(mass > tiny, (s + k * init) / mass.clamp_min(tiny), prev)
    return new[..., 0], new[..., 1]  # (B, N) each


def _e_step(d: Tensor, p: Tensor, f: Tensor, logit_g: Tensor, eps: float) -> Tensor:
    """Log-odds of the posterior, (B, P): finite for any p, f (clamped to [eps, 1 - eps])."""
    p = p.clamp(eps, 1.0 - eps)
    f = f.clamp(eps, 1.0 - eps)
    a = torch.logit(p) - torch.logit(f)  # (B, N): evidence of a positive vote
    c = logit_g + (torch.log1p(-p) - torch.log1p(-f)).sum(dim=1)  # (B,): all raters voting 0
    return torch.baddbmm(c[:, None, None], a[:, None, :], d).squeeze(1)  # (B, 1, N) @ (B, N, P) -> (B, P)


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
    for unidentifiable parameters. All-empty stacks give ~0, all-full stacks ~1, never NaN.
    """
    if mode not in _DEFAULT_ITERATIONS:
        raise ValueError(f"mode must be 'paper' or 'itk', got {mode!r}")
    if masks_bn.dim() < 3:
        raise ValueError(f"expected (B, N, *spatial), got shape {tuple(masks_bn.shape)}")
    n_iter = _DEFAULT_ITERATIONS[mode] if iterations is None else int(iterations)
    k = (1.0 if mode == "paper" else 0.0) if pseudocount is None else float(pseudocount)
    if n_iter < 1:
        raise ValueError("iterations must be >= 1")
    b, n = masks_bn.shape[:2]
    spatial = masks_bn.shape[2:]
    finfo = torch.finfo(dtype)
    eps = 16 * finfo.eps  # p, f clamp: 1 - eps stays < 1 in dtype
    tiny = finfo.tiny ** 0.5  # below this a sum of (1-)posteriors counts as empty (~1e-19 in float32)

    with torch.autocast(device_type=masks_bn.device.type, enabled=False):  # nnU-Net predicts under fp16 autocast
        fg = masks_bn if masks_bn.dtype == torch.bool else masks_bn != 0
        d = fg.reshape(b, n, -1).to(dtype)  # (B, N, P)
        init = torch.tensor([sensitivity_init, fpr_init], dtype=dtype, device=d.device)  # (2,): p, f
        p = init[0].expand(b, n)  # (B, N)
        f = init[1].expand(b, n)

        if mode == "paper":
            logit_g = torch.logit(torch.tensor(prior, dtype=dtype, device=d.device).clamp(eps, 1 - eps))
            for it in range(n_iter):
                logits = _e_step(d, p, f, logit_g, eps)  # (B, P)
                if it + 1 < n_iter:
                    p, f = _m_step(d, torch.sigmoid(logits), torch.sigmoid(-logits), p, f, init, k, tiny)
        else:
            w = d.mean(dim=1)  # (B, P): mean vote
            g = (w.mean(dim=1) * confidence_weight).clamp(eps, 1 - eps)  # (B,): fixed global prior
            logit_g = torch.logit(g)
            w_neg = 1.0 - w
            for it in range(n_iter):
                p_new, f_new = _m_step(d, w, w_neg, p, f, init, k, tiny)
                logits = _e_step(d, p_new, f_new, logit_g, eps)
                w, w_neg = torch.sigmoid(logits), torch.sigmoid(-logits)  # (B, P)
                done = it > 0 and torch.maximum((p_new - p).abs().max(), (f_new - f).abs().max()).item() < tol
                p, f = p_new, f_new
                if done:
                    break
        w = torch.sigmoid(logits)  # (B, P)
        # Unanimously empty / full stacks: p (resp. f) is unidentifiable; answer the obvious consensus exactly.
        fg_flat = fg.reshape(b, -1)
        w = torch.where(fg_flat.any(dim=1, keepdim=True), w, 0.0)
        w = torch.where(fg_flat.all(dim=1, keepdim=True), 1.0, w)
        return w.reshape(b, *spatial)


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
