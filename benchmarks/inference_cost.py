"""Inference cost per image: the staged sampler against DDIM-100 and DDPM-1000 (question 1).

Same network (randomly initialised: cost does not depend on the weights), same input, same code
path (`UniSegDiffNetwork.predict_probabilities`: CFENet once, the sampler's DNet calls, fusion of
the masks); only `net.sampler` changes:

- `staged`      : RS 1 call + PM 10 calls (batch 2) + DR 1 call (batch 20) -> 20 masks -> STAPLE
- `ddim100xN`   : DDIM, 100 steps, eps prediction, N parallel trajectories (N masks, fused)
- `ddpm1000xN`  : DDIM with eta = 1 and 1000 steps = DDPM ancestral sampling

Long plans are measured over their first `--measure-steps` DNet calls and extrapolated linearly:
elapsed up to the start of call k+1 (CFENet, set-up, k full steps) + (n - k) x the median step time
+ the fusion of the N masks timed on its own. Such rows are flagged `extrapolated` (the cost of a
step does not change along the trajectory: same batch, same network). `--full` runs them through.

    python benchmarks/inference_cost.py                          # CPU defaults (several minutes)
    python benchmarks/inference_cost.py --device cuda --full --repeats 5
"""
from __future__ import annotations

import argparse
import itertools
import time

import torch
from _common import (
    CONFIGS,
    add_common_args,
    apply_smoke,
    build_net,
    median,
    meta,
    print_table,
    setup,
    syncer,
    timed,
    write_json,
)

from nnunet_unisegdiff.diffusion.fusion import fuse_masks
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, SamplingPlan, StagedPlan

DEFAULT_CONFIGS = ["2d-256-w1.0", "2d-256-w0.25", "3d-32-w0.25"]


def plan_config(name: str) -> SamplingPlan:
    """'staged', 'ddim<steps>x<draws>' or 'ddpm<steps>x<draws>'."""
    if name == "staged":
        return StagedPlan()
    kind, rest = name[:4], name[4:]
    steps, draws = (int(v) for v in rest.split("x"))
    if kind not in ("ddim", "ddpm"):
        raise ValueError(f"unknown plan {name!r}")
    return DDIMPlan(samples=draws, steps=steps, prediction="eps", eta=1.0 if kind == "ddpm" else 0.0)


class _Stop(Exception):
    pass


class StepBudgetSampler(StagedSampler):
    """The same sampler, but it records when each DNet call starts and stops after `limit` calls."""

    def __init__(self, plan: SamplingPlan, limit: int, sync) -> None:
        super().__init__(plan)
        self.limit, self.sync, self.starts = limit, sync, []

    def sample(self, denoise, shape, device, generator=None):
        def counted(x_t, t):
            self.sync()
            self.starts.append(time.perf_counter())
            if len(self.starts) > self.limit:
                raise _Stop
            return denoise(x_t, t)
        return super().sample(counted, shape, device, generator)


def calls_and_evaluations(cfg: SamplingPlan) -> tuple[int, int, int]:
    """(sequential DNet calls, sample evaluations = sum of the calls' batch sizes, masks) per image."""
    if isinstance(cfg, StagedPlan):
        pm = len(cfg.pm_timesteps())
        return 1 + pm + 1, 1 + 2 * pm + 2 * cfg.draws_per_branch, 2 * cfg.draws_per_branch
    return cfg.steps, cfg.steps * cfg.samples, cfg.samples


def run_plan(net, image, cfg: SamplingPlan, measure_steps: int | None, sync) -> dict:
    """One timed prediction of one image; extrapolated when `measure_steps` < the plan's calls."""
    n_calls, _, n_masks = calls_and_evaluations(cfg)
    if measure_steps is None or measure_steps >= n_calls:
        net.sampler = StagedSampler(cfg)
        seconds, _ = timed(lambda: net.predict_probabilities(image), sync)
        return {"seconds": seconds, "measured_calls": n_calls, "extrapolated": False}
    sampler = StepBudgetSampler(cfg, measure_steps, sync)
    net.sampler = sampler
    sync()
    t0 = time.perf_counter()
    try:
        net.predict_probabilities(image)
        raise RuntimeError("the step budget was not reached")
    except _Stop:
        pass
    s = sampler.starts  # measure_steps + 1 call starts
    step = median([b - a for a, b in itertools.pairwise(s)])
    masks = torch.randint(0, net.num_classes, (image.shape[0], n_masks, *image.shape[2:]), device=image.device)
    fusion, _ = timed(lambda: fuse_masks(masks, net.num_classes, net.settings.fusion), sync)
    seconds = (s[-1] - t0) + (n_calls - measure_steps) * step + fusion
    return {"seconds": seconds, "measured_calls": measure_steps, "extrapolated": True, "step_seconds": step,
            "fusion_seconds": fusion}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=2)
    ap.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=sorted(CONFIGS))
    ap.add_argument("--plans", nargs="+", default=["staged", "ddim100x1", "ddpm1000x1", "ddim100x20"],
                    help="staged, ddim<steps>x<draws>, ddpm<steps>x<draws>")
    ap.add_argument("--measure-steps", type=int, default=3,
                    help="DNet calls measured before extrapolating plans longer than this (single draw)")
    ap.add_argument("--measure-steps-ensemble", type=int, default=1,
                    help="the same for plans with several draws per call (batch 20 calls are slow on a CPU)")
    ap.add_argument("--full", action="store_true", help="run every plan through, no extrapolation")
    args = ap.parse_args()
    apply_smoke(args, "inference_cost", configs=["2d-32-w0.25"], plans=["staged", "ddim4x1", "ddpm8x2"], repeats=1,
                measure_steps=2)
    return args


def config_rows(cname: str, plans: dict, args, device, sync) -> list[dict]:
    """One row per plan for one network config: each plan's median time per image over the repeats, round-robin."""
    patch, width = CONFIGS[cname]
    net = build_net(patch, width, device=device)
    torch.manual_seed(1)
    image = torch.randn(1, 3, *patch, device=device)
    # warm-up: CFENet and one small DNet call (allocator, kernels), not the whole plans
    with torch.no_grad():
        _, cond = net.condition(image)
        net.dnet(torch.randn(1, 2, *patch, device=device), torch.zeros(1, dtype=torch.long, device=device), cond)
    sync()
    per_plan: dict[str, list[dict]] = {p: [] for p in plans}
    for _ in range(args.repeats):  # round-robin over the plans: load changes hit all of them
        for p, cfg in plans.items():
            if args.full or isinstance(cfg, StagedPlan):
                k = None
            else:
                k = args.measure_steps if cfg.samples == 1 else args.measure_steps_ensemble
            per_plan[p].append(run_plan(net, image, cfg, k, sync))
    base = median([r["seconds"] for r in per_plan["staged"]]) if "staged" in per_plan else float("nan")
    rows = []
    for p, cfg in plans.items():
        calls, evals, masks = calls_and_evaluations(cfg)
        runs = per_plan[p]
        sec = median([r["seconds"] for r in runs])
        rows.append({"config": cname, "patch": "x".join(map(str, patch)), "dnet_width": width, "plan": p,
                     "dnet_calls": calls, "sample_evaluations": evals, "masks": masks,
                     "seconds_per_image": sec, "ratio_to_staged": sec / base,
                     "extrapolated": runs[0]["extrapolated"], "measured_calls": runs[0]["measured_calls"],
                     "step_seconds": median([r["step_seconds"] for r in runs]) if runs[0]["extrapolated"] else None,
                     "all_seconds": [r["seconds"] for r in runs]})
        r = rows[-1]
        how = f"extrapolated from {r['measured_calls']} calls" if r["extrapolated"] else "measured"
        print(f"  {cname} {p}: {sec:.2f} s/image ({how})", flush=True)
    return rows


def main() -> None:
    args = parse_args()
    device = setup(args)
    sync = syncer(device)
    plans = {p: plan_config(p) for p in args.plans}

    rows = []
    for cname in args.configs:
        rows += config_rows(cname, plans, args, device, sync)  # the config's network is freed on return
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for r in rows:
        r["how"] = f"extrap. ({r['measured_calls']} calls)" if r["extrapolated"] else "measured"
    print()
    print_table(rows, [("config", "config", ""), ("plan", "plan", ""), ("dnet_calls", "DNet calls", "d"),
                       ("sample_evaluations", "evals", "d"), ("masks", "masks", "d"),
                       ("seconds_per_image", "s/image", ".2f"), ("ratio_to_staged", "x staged", ".1f"),
                       ("how", "how", "")])
    write_json("inference_cost", meta(device, repeats=args.repeats, timing="median seconds per image (batch 1)"),
               rows, args.json)


if __name__ == "__main__":
    main()
