"""Convergence of the four DNet objectives (paper Table 4 in miniature; question 5 of issue 6).

On the synthetic lesion set (`nnunet_unisegdiff.conversion.synthetic.generate_cases`, in memory, no nnU-Net
CLI): CFENet (the nnU-Net-planned UNet) is trained once, briefly, with nnU-Net's loss and SGD; then
DNet is trained from the same initial weights, on the same batches with the same noise, for the same
number of steps, once per objective, each evaluated with its own sampling plan:

| objective      | type                  | sampling                                                     |
| staged         | `StagedObjective`     | `StagedPlan`: 12 calls, 20 masks, STAPLE                     |
| uniform-eps    | `UniformEpsObjective` | `DDIMPlan`: `--ddim-steps` (100), eps prediction             |
| uniform-x0     | `UniformX0Objective`  | `DDIMPlan`: `--ddim-steps` (100), x0 prediction              |
| one-step       | `OneStepObjective`    | `OneStepPlan`: one x0 call from pure noise                   |

(`--draws` parallel samples for the non-staged plans, STAPLE-fused when > 1.) Dice: foreground Dice
per held-out case (a case whose prediction and label are both empty scores 1), averaged. Reported:
Dice after the budget, and the first evaluated step at which each objective reaches the staged
run's final Dice. CFENet's own Dice is the reference row. DNet uses AdamW with cosine annealing
(paper), at a learning rate raised for the short budget (`--lr`).

    python benchmarks/convergence.py            # CPU-sized: about 7 minutes on one busy core
    python benchmarks/convergence.py --long     # 8x the steps, 4x the cases, 2x CFENet's steps
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import (
    add_common_args,
    apply_smoke,
    build_net,
    ds_targets,
    meta,
    print_table,
    setup,
    write_json,
)

from nnunet_unisegdiff.conversion.synthetic import TEST_STREAM, generate_cases
from nnunet_unisegdiff.defaults import DEFAULT_SEED
from nnunet_unisegdiff.dice import dice
from nnunet_unisegdiff.diffusion.ablations import OBJECTIVES
from nnunet_unisegdiff.diffusion.sampler import StagedSampler
from nnunet_unisegdiff.diffusion.sampling_plans import DDIMPlan, OneStepPlan, SamplingPlan, StagedPlan
from nnunet_unisegdiff.diffusion.staged import phase_b_loss
from nnunet_unisegdiff.training.losses import segmentation_loss


def load_cases(n: int, size: int, seed: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (n, 3, s, s) z-scored per image and channel, labels (n, 1, s, s) float)."""
    cases = generate_cases(n, seed=seed, size=size, stream=stream, prefix="SYNTS" if stream == TEST_STREAM else "SYN")
    img = torch.from_numpy(np.stack([c.image for c in cases])).permute(0, 3, 1, 2).float()
    img = (img - img.mean((2, 3), keepdim=True)) / img.std((2, 3), keepdim=True).clamp_min(1e-6)
    lab = torch.from_numpy(np.stack([c.label for c in cases]).astype(np.float32))[:, None]
    return img, lab


def batches(images, labels, batch_size: int, seed: int):
    """Endless random batches with random flips, reproducible for a seed."""
    g = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
        x, y = images[idx].clone(), labels[idx].clone()
        for axis in (2, 3):
            flip = torch.rand(batch_size, generator=g) < 0.5
            x[flip], y[flip] = x[flip].flip(axis), y[flip].flip(axis)
        yield x, y


def dice_per_case(pred: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Foreground Dice of (n, *spatial) hard predictions; both empty -> 1."""
    return [dice(p.numpy(), lab.numpy(), labels=(1,), both_empty=1.0)
            for p, lab in zip(pred.bool(), labels[:, 0].bool())]


def sampler_for(mode: str, args) -> SamplingPlan:
    """The plan an objective (an OBJECTIVES kind) is sampled with."""
    if mode == "staged":
        return StagedPlan()
    if mode == "one-step":
        return OneStepPlan(samples=args.draws)
    return DDIMPlan(samples=args.draws, steps=args.ddim_steps, prediction="eps" if mode == "uniform-eps" else "x0")


@torch.no_grad()
def evaluate(net, images, labels, mode: str, args, device) -> float:
    net.eval()
    net.sampler = StagedSampler(sampler_for(mode, args))
    preds = []
    for i in range(0, images.shape[0], args.eval_batch):
        preds.append(net.predict_probabilities(images[i:i + args.eval_batch].to(device)).argmax(1).cpu())
    net.train()
    return float(np.mean(dice_per_case(torch.cat(preds), labels)))


def train_cfenet(net, images, labels, args, device) -> float:
    """Phase A: the plan's UNet with deep supervision, nnU-Net's loss, SGD + poly lr."""
    unet = net.cfenet.train()
    unet.decoder.deep_supervision = True
    opt = torch.optim.SGD(unet.parameters(), args.cfenet_lr, weight_decay=3e-5, momentum=0.99, nesterov=True)
    data = batches(images, labels, args.batch_size, args.seed)
    loss_fn = None
    for step in range(args.cfenet_steps):
        for group in opt.param_groups:
            group["lr"] = args.cfenet_lr * (1 - step / args.cfenet_steps) ** 0.9
        x, y = (t.to(device) for t in next(data))
        out = unet(x)
        if loss_fn is None:
            loss_fn = segmentation_loss(deep_supervision_outputs=len(out))
        loss = loss_fn(out, ds_targets(y, out))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 12)
        opt.step()
    unet.decoder.deep_supervision = False
    unet.eval()
    return float(loss.detach())


@torch.no_grad()
def cfenet_dice(net, images, labels, device) -> float:
    preds = torch.cat([net.cfenet(images[i:i + 16].to(device)).argmax(1).cpu() for i in range(0, len(images), 16)])
    return float(np.mean(dice_per_case(preds, labels)))


def train_dnet(net, init_state, mode: str, images, labels, test, args, device) -> dict:
    net.dnet.load_state_dict(init_state)
    net.set_trainable("B")
    net.train()
    opt = torch.optim.AdamW(net.dnet.parameters(), args.lr, weight_decay=1e-2)
    objective = OBJECTIVES[mode]()
    seg_loss = segmentation_loss()
    ac = objective.diffusion.alphas_cumprod().to(device)
    gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    data = batches(images, labels, args.batch_size, args.seed + 1)
    curve, t_train, t_eval = [], 0.0, 0.0
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = 0.5 * args.lr * (1 + math.cos(math.pi * (step - 1) / args.steps))
        x, y = (t.to(device) for t in next(data))
        loss, _ = phase_b_loss(lambda x_t, t, x=x: net(x, x_t, t), y, objective, seg_loss, ac, net.num_classes, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.dnet.parameters(), 12)
        opt.step()
        t_train += time.perf_counter() - t0
        if step % args.eval_every == 0 or step == args.steps:
            t0 = time.perf_counter()
            curve.append((step, evaluate(net, *test, mode, args, device)))
            t_eval += time.perf_counter() - t0
            print(f"  {mode:<12} step {step:>5}: loss {float(loss.detach()):.4f}, Dice {curve[-1][1]:.4f}", flush=True)
    return {"curve": curve, "train_s": t_train, "eval_s": t_eval}


def parse_args() -> argparse.Namespace:
    """The command line, with --smoke and --long applied and the staged objective always run."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=None)
    ap.add_argument("--long", action="store_true", help="8x the steps, 4x the cases, 2x the CFENet steps")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--features", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                    help="CFENet features per stage (the stage count must fit the size: smallest side 4)")
    ap.add_argument("--width", type=float, default=0.25, help="DNet width (fraction of the plan's features)")
    ap.add_argument("--token-budget", type=int, default=64,
                    help="DCA at stages with at most this many positions (64 = 8x8, 1/8 of a 64^2 image, as 1024 is "
                         "of the paper's 256^2)")
    ap.add_argument("--train-cases", type=int, default=60)
    ap.add_argument("--test-cases", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--cfenet-steps", type=int, default=200)
    ap.add_argument("--cfenet-lr", type=float, default=1e-2)
    ap.add_argument("--steps", type=int, default=480, help="DNet steps per objective (the budget)")
    ap.add_argument("--eval-every", type=int, default=120)
    ap.add_argument("--lr", type=float, default=3e-3,
                    help="DNet AdamW peak lr (paper: 1e-4 for 300 epochs; at 1e-3 nothing but the x0 objectives "
                         "learned within 240 steps)")
    ap.add_argument("--ddim-steps", type=int, default=100)
    ap.add_argument("--draws", type=int, default=1, help="parallel samples of the non-staged plans")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--modes", nargs="+", default=list(OBJECTIVES), choices=list(OBJECTIVES))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    apply_smoke(args, "convergence", size=32, features=[8, 16, 32], train_cases=4, test_cases=2, batch_size=2,
                cfenet_steps=2, steps=2, eval_every=2, ddim_steps=2, eval_batch=2, long=False)
    if args.long:
        args.steps, args.eval_every, args.cfenet_steps = 8 * args.steps, 4 * args.eval_every, 2 * args.cfenet_steps
        args.train_cases, args.test_cases = 4 * args.train_cases, 4 * args.test_cases
    if "staged" not in args.modes:
        args.modes = ["staged"] + args.modes
    return args


def result_rows(runs: dict[str, dict], ref: float, cfenet_s: float, args) -> list[dict]:
    """CFENet's reference row, then per objective its final and best Dice and when it reached staged's final."""
    target = runs["staged"]["curve"][-1][1]
    rows = [{"objective": "CFENet alone (reference)", "sampling": "argmax of CFENet", "final_dice": ref,
             "steps_to_staged_final": None, "train_s": cfenet_s, "eval_s": None}]
    for mode, run in runs.items():
        reached = next((s for s, d in run["curve"] if d >= target), None)
        rows.append({"objective": mode, "sampling": _sampling_label(sampler_for(mode, args)),
                     "final_dice": run["curve"][-1][1], "best_dice": max(d for _, d in run["curve"]),
                     "steps_to_staged_final": reached,
                     "reached": f"{reached}" if reached is not None else f"> {args.steps}",
                     "train_s": run["train_s"], "eval_s": run["eval_s"], "curve": run["curve"]})
    return rows


def main() -> None:
    args = parse_args()
    device = setup(args)
    t_start = time.perf_counter()

    images, labels = load_cases(args.train_cases, args.size, DEFAULT_SEED, 0)
    test = load_cases(args.test_cases, args.size, DEFAULT_SEED, TEST_STREAM)
    net = build_net((args.size, args.size), args.width, features=args.features, seed=args.seed, device=device,
                    token_budget=args.token_budget)
    t0 = time.perf_counter()
    cfenet_loss = train_cfenet(net, images, labels, args, device)
    cfenet_s = time.perf_counter() - t0
    ref = cfenet_dice(net, *test, device)
    print(f"CFENet: {args.cfenet_steps} steps in {cfenet_s:.0f} s, final loss {cfenet_loss:.3f}, test Dice {ref:.4f}")
    init_state = {k: v.clone() for k, v in net.dnet.state_dict().items()}

    runs = {mode: train_dnet(net, init_state, mode, images, labels, test, args, device) for mode in args.modes}
    target = runs["staged"]["curve"][-1][1]
    rows = result_rows(runs, ref, cfenet_s, args)
    print()
    print_table(rows, [("objective", "objective", ""), ("sampling", "sampling", ""), ("final_dice", "Dice", ".4f"),
                       ("best_dice", "best", ".4f"), ("reached", "steps to staged's final", ""),
                       ("train_s", "train s", ".0f"), ("eval_s", "eval s", ".0f")])
    settings = {k: v for k, v in vars(args).items() if k not in ("json", "device", "threads")}
    write_json("convergence", meta(device, settings=settings, staged_final_dice=target,
                                   total_seconds=time.perf_counter() - t_start,
                                   dice="mean foreground Dice over held-out cases (both empty = 1)"),
               rows, args.json)


def _sampling_label(plan: SamplingPlan) -> str:
    match plan:
        case StagedPlan():
            return "staged 12 calls, 20 masks, STAPLE"
        case OneStepPlan():
            return f"one-step x{plan.samples}"
        case DDIMPlan():
            return f"DDIM-{plan.steps} {plan.prediction} x{plan.samples}"


if __name__ == "__main__":
    main()
