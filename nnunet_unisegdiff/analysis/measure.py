"""The measurement of `unisegdiff gradients`: DNet's mean gradient magnitude per objective (eps
target, x0 target, staged) and timestep, on a fixed batch with CFENet frozen."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from nnunet_unisegdiff.diffusion.ablations import UniformEpsObjective, UniformX0Objective
from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss

OBJECTIVE_LABELS = {"eps": "eps target (uniform t)", "x0": "x0 target (uniform t)",
                    "staged": "staged objective (UniSegDiff)"}


def objectives(staged=None) -> dict:
    """The three objectives compared (the staged one may be a trainer's), on its diffusion settings."""
    staged = staged if isinstance(staged, StagedObjective) else StagedObjective()
    return {"eps": UniformEpsObjective(diffusion=staged.diffusion),
            "x0": UniformX0Objective(diffusion=staged.diffusion),
            "staged": staged}


def trained_parameter_names(dnet, alpha, beta) -> list[str]:
    """DNet parameters an objective trains: all but the decoder whose loss weight is zero everywhere."""
    skip = []
    if float(alpha.abs().sum()) == 0:
        skip.append("eps_decoder.")
    if float(beta.abs().sum()) == 0:
        skip.append("x0_decoder.")
    return [n for n, _ in dnet.named_parameters() if not n.startswith(tuple(skip))]


def objective_gradients(network, cond, images_batch: int, labels, seg_loss, objective, t: int, eps):
    """{parameter name: gradient} of DNet for one objective at drawn timestep t, restricted to the
    parameters it trains. cond: CFENet's condition features for the batch; labels: (B, 1, *spatial);
    eps: (B, C, *spatial) noise."""
    dnet = network.dnet
    tt = torch.full((images_batch,), int(t), device=labels.device, dtype=torch.long)
    targets = objective.targets(tt)
    dnet.zero_grad(set_to_none=True)
    loss, _ = phase_b_loss(network.denoiser(cond), labels, objective, seg_loss,
                           objective.diffusion.alphas_cumprod().to(labels.device), network.num_classes,
                           t=tt, eps=eps)
    loss.backward()
    names = set(trained_parameter_names(dnet, targets.alpha, targets.beta))
    grads = {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
             for n, p in dnet.named_parameters() if n in names}
    dnet.zero_grad(set_to_none=True)
    return grads


def magnitude(grads: Mapping) -> tuple[float, float]:
    """(mean |g| over all elements, L2 norm) of a set of parameter gradients."""
    total = sum(float(g.abs().sum()) for g in grads.values())
    count = sum(g.numel() for g in grads.values())
    norm = float(np.sqrt(sum(float(g.double().square().sum()) for g in grads.values())))
    return total / max(count, 1), norm


def timestep_grid(num: int, num_timesteps: int = 1000) -> list[int]:
    return sorted({int(round(t)) for t in np.linspace(0, num_timesteps - 1, num)})


def gradient_profile(network, images, labels, seg_loss, timesteps: Sequence[int], repeats: int = 2,
                     seed: int = 0, staged_objective=None) -> dict:
    """Mean gradient magnitude per objective and timestep. images: (B, C_in, *spatial),
    labels: (B, 1, *spatial). Returns {"timesteps", "objectives": {name: {...}}}."""
    network.set_trainable("B")
    network.train()
    cond = network.condition(images)[1]
    shape = (images.shape[0], network.num_classes, *images.shape[2:])
    noises = [torch.randn(shape, generator=torch.Generator().manual_seed(seed + r)).to(images.device)
              for r in range(repeats)]
    result = {}
    for name, objective in objectives(staged_objective).items():
        means, stds, norms, count = [], [], [], 0
        for t in timesteps:
            values = []
            for eps in noises:
                grads = objective_gradients(network, cond, images.shape[0], labels, seg_loss, objective, t, eps)
                values.append(magnitude(grads))
                count = sum(g.numel() for g in grads.values())
            mags = np.array(values)
            means.append(float(mags[:, 0].mean()))
            stds.append(float(mags[:, 0].std()))
            norms.append(float(mags[:, 1].mean()))
        result[name] = {"label": OBJECTIVE_LABELS[name], "mean_abs_grad": means, "mean_abs_grad_std": stds,
                        "grad_norm": norms, "parameters": count,
                        "objective": {"mode": objective.kind, "high": objective.high, "low": objective.low,
                                      "weights": [list(w) for w in objective.weights]}}
    return {"timesteps": list(map(int, timesteps)), "objectives": result}
