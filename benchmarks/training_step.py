"""Training iteration cost: phase B (staged diffusion) against phase A (plain nnU-Net) (question 4 of
issue 6). Target: phase B <= 1.5 x phase A.

On the same batch (nnU-Net's 2D plan for 256x256 RGB: batch 2, 7 stages, 32..512 features):
- phase A = `nnUNetTrainer.train_step`: the plan's UNet with deep supervision, nnU-Net's Dice+CE
  (`MemoryEfficientSoftDiceLoss`, do_bg False) in its `DeepSupervisionWrapper` (weights 1/2^i, last
  0, normalised), backward, grad-norm clip 12, SGD (lr 1e-2, momentum 0.99, Nesterov, wd 3e-5);
- phase B = `nnUNetTrainerUniSegDiff.train_step`: CFENet frozen (eval, no grad), `phase_b_loss`
  (staged objective: one DNet forward with both decoders, alpha MSE + beta Dice+CE), backward,
  clip 12, AdamW (lr 1e-4, wd 1e-2).
On CUDA both run under fp16 autocast with a GradScaler, as nnU-Net does.

Time: A and B alternate within one process (medians over `--repeats`). Rows `fwd` add the
forward passes alone (no grad) to show where phase B's time goes. Memory: each variant runs a few
steps in its own subprocess (only that variant's model built); CPU: peak RSS (VmHWM; getrusage's
ru_maxrss would report the parent's size, Linux carries it over fork + exec) and its rise over the
RSS just before the first step (model, optimiser, batch); CUDA: `torch.cuda.max_memory_allocated`.

    python benchmarks/training_step.py
    python benchmarks/training_step.py --device cuda --repeats 20 --configs 2d-256-w1.0
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
from _common import (
    CONFIGS,
    add_common_args,
    apply_smoke,
    build_net,
    build_unet,
    ds_targets,
    interleaved,
    median,
    meta,
    print_table,
    rss_mib,
    setup,
    syncer,
    write_json,
)

from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss
from nnunet_unisegdiff.training.losses import segmentation_loss

TARGET = 1.5


def make_batch(patch, batch_size: int, device, seed: int = 0):
    """Random z-scored RGB images and blob labels (B, 1, *spatial), plus the DS targets nnU-Net's
    data loader would give (nearest downsampling to every decoder resolution)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(batch_size, 3, *patch, generator=g)
    grids = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in patch], indexing="ij")
    labels = []
    for _ in range(batch_size):
        c = torch.rand(len(patch), generator=g) - 0.5
        r = 0.2 + 0.3 * torch.rand((), generator=g)
        labels.append((sum((x - ci) ** 2 for x, ci in zip(grids, c)) < r ** 2).float())
    labels = torch.stack(labels)[:, None]
    return data.to(device), labels.to(device)


class Steps:
    """Phase-A and phase-B training steps of one configuration, as the trainers run them."""

    def __init__(self, cname: str, device: torch.device, batch_size: int, phases: str = "AB") -> None:
        patch, width = CONFIGS[cname]
        self.device = device
        self.amp = device.type == "cuda"
        self.data, self.labels = make_batch(patch, batch_size, device)
        if "A" in phases:
            # phase A: the plan's UNet with deep supervision (its own copy: A and B share no state)
            self.unet = build_unet(patch, deep_supervision=True, device=device).train()
            self.opt_a = torch.optim.SGD(self.unet.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99,
                                         nesterov=True)
            with torch.no_grad():
                outs = self.unet(self.data)
            self.targets = ds_targets(self.labels, outs)
            self.loss_a = segmentation_loss(deep_supervision_outputs=len(outs))
            self.scaler_a = torch.amp.GradScaler("cuda") if self.amp else None
        if "B" in phases:
            self._init_b(patch, width)

    def _init_b(self, patch, width) -> None:
        """phase B: the composite with CFENet frozen, DNet trained."""
        device = self.device
        net = build_net(patch, width, deep_supervision=False, device=device)
        net.cfenet.requires_grad_(False)
        net.dnet.requires_grad_(True)
        net.freeze_cfenet = True
        self.net = net.train()
        self.opt_b = torch.optim.AdamW(net.dnet.parameters(), 1e-4, weight_decay=1e-2)
        self.loss_b = segmentation_loss()
        self.objective = StagedObjective()
        self.ac = self.objective.diffusion.alphas_cumprod().to(device)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.scaler_b = torch.amp.GradScaler("cuda") if self.amp else None

    def _autocast(self):
        return torch.autocast(self.device.type, enabled=self.amp)

    def _update(self, loss, params, opt, scaler) -> None:
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params(), 12)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params(), 12)
            opt.step()

    def step_a(self) -> float:
        self.opt_a.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.loss_a(self.unet(self.data), self.targets)
        self._update(loss, self.unet.parameters, self.opt_a, self.scaler_a)
        return loss.item()

    def step_b(self) -> float:
        self.opt_b.zero_grad(set_to_none=True)
        with self._autocast():
            loss, _ = phase_b_loss(lambda x_t, t: self.net(self.data, x_t, t), self.labels, self.objective,
                                   self.loss_b, self.ac, self.net.num_classes, self.gen)
        self._update(loss, self.net.dnet.parameters, self.opt_b, self.scaler_b)
        return loss.item()

    @torch.no_grad()
    def fwd_a(self):
        with self._autocast():
            return self.unet(self.data)

    @torch.no_grad()
    def fwd_cfenet(self):
        with self._autocast():
            return self.net.condition(self.data)

    @torch.no_grad()
    def fwd_dnet(self):
        if not hasattr(self, "_dnet_in"):
            cond = self.net.condition(self.data)[1]
            x_t = torch.randn(self.labels.shape[0], self.net.num_classes, *self.labels.shape[2:], device=self.device)
            self._dnet_in = (x_t, torch.full((x_t.shape[0],), 500, device=self.device), cond)
        with self._autocast():
            return self.net.dnet(*self._dnet_in)


def worker(args) -> None:
    """Memory of one variant: a few steps in a fresh process, peak printed as JSON."""
    device = setup(args)
    steps = Steps(args.worker_config, device, args.batch_size, phases=args.worker)
    fn = steps.step_a if args.worker == "A" else steps.step_b
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    before = rss_mib()
    for _ in range(args.worker_steps):
        fn()
    out = {"peak_rss_mib": rss_mib("VmHWM"), "rss_before_steps_mib": before}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
        out["cuda_before_steps_mib"] = base_cuda / 2 ** 20
    print("RESULT " + json.dumps(out))


def memory_of(variant: str, cname: str, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--worker-config", cname,
           "--device", args.device, "--batch-size", str(args.batch_size), "--worker-steps", str(args.worker_steps)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    if res.returncode or not lines:
        raise RuntimeError(f"memory worker {variant} {cname} failed:\n{res.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=3)
    ap.add_argument("--configs", nargs="+", default=["2d-256-w1.0", "2d-256-w0.5", "2d-256-w0.25"],
                    choices=sorted(CONFIGS))
    ap.add_argument("--batch-size", type=int, default=2, help="nnU-Net's plan for 256x256 RGB gives 2")
    ap.add_argument("--worker-steps", type=int, default=2, help="steps per memory subprocess")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--worker", choices=["A", "B"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    apply_smoke(args, "training_step", configs=["2d-32-w0.25"], repeats=1, worker_steps=1)
    device = setup(args)
    sync = syncer(device)

    rows = []
    for cname in args.configs:
        steps = Steps(cname, device, args.batch_size)
        fns = {"A step": steps.step_a, "B step": steps.step_b, "A fwd": steps.fwd_a,
               "B CFENet fwd": steps.fwd_cfenet, "B DNet fwd": steps.fwd_dnet}
        times = interleaved(fns, args.repeats, sync)
        ratios = [b / a for a, b in zip(times["A step"], times["B step"])]  # paired within a round
        params = {"cfenet": sum(p.numel() for p in steps.unet.parameters()),
                  "dnet": sum(p.numel() for p in steps.net.dnet.parameters())}
        del steps
        mem = {} if args.no_memory else {v: memory_of(v, cname, args) for v in ("A", "B")}
        row = {"config": cname, "patch": "x".join(map(str, CONFIGS[cname][0])), "dnet_width": CONFIGS[cname][1],
               "batch_size": args.batch_size, "a_step_s": median(times["A step"]), "b_step_s": median(times["B step"]),
               "ratio": median(ratios), "target_met": median(ratios) <= TARGET,
               "a_fwd_s": median(times["A fwd"]), "b_cfenet_fwd_s": median(times["B CFENet fwd"]),
               "b_dnet_fwd_s": median(times["B DNet fwd"]), "params_cfenet_m": params["cfenet"] / 1e6,
               "params_dnet_m": params["dnet"] / 1e6, "all_times_s": times, "memory": mem}
        for v in mem:
            key = "cuda_max_allocated_mib" if device.type == "cuda" else "peak_rss_mib"
            row[f"{v.lower()}_mem_mib"] = mem[v][key]
            row[f"{v.lower()}_mem_rise_mib"] = (mem[v][key] - mem[v]["cuda_before_steps_mib"] if device.type == "cuda"
                                                else mem[v]["peak_rss_mib"] - mem[v]["rss_before_steps_mib"])
        rows.append(row)
        print(f"  {cname}: A {row['a_step_s']:.3f} s, B {row['b_step_s']:.3f} s, ratio {row['ratio']:.2f}", flush=True)
    mem_name = "CUDA max alloc" if device.type == "cuda" else "peak RSS"
    print()
    print_table(rows, [("config", "config", ""), ("a_step_s", "A step s", ".3f"), ("b_step_s", "B step s", ".3f"),
                       ("ratio", "B/A", ".2f"), ("target_met", f"<= {TARGET}", ""),
                       ("a_fwd_s", "A fwd s", ".3f"), ("b_cfenet_fwd_s", "B CFENet fwd s", ".3f"),
                       ("b_dnet_fwd_s", "B DNet fwd s", ".3f"), ("params_cfenet_m", "UNet M", ".1f"),
                       ("params_dnet_m", "DNet M", ".1f"), ("a_mem_mib", f"A {mem_name} MiB", ".0f"),
                       ("b_mem_mib", f"B {mem_name} MiB", ".0f"), ("a_mem_rise_mib", "A rise MiB", ".0f"),
                       ("b_mem_rise_mib", "B rise MiB", ".0f")])
    write_json("training_step", meta(device, repeats=args.repeats, target_ratio=TARGET, batch_size=args.batch_size,
                                     memory="CUDA: max_memory_allocated; CPU: peak RSS (VmHWM) of a subprocess running "
                                            f"{args.worker_steps} steps of one variant; "
                                            "rise = peak - RSS before the first step",
                                     timing="median seconds per iteration, A and B alternating; ratio = median of "
                                            "paired B/A"), rows, args.json)


if __name__ == "__main__":
    main()
