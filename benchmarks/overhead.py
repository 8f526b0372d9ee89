"""Staged inference against its physical floor: the sum of its own forward passes run alone (question 2).

Floor = CFENet once (batch 1) + the 12 DNet calls at their own batch sizes and timesteps
(RS: 1 at t=999; PM: 10 calls of batch 2 at 599, 569, ..., 329; DR: 1 call of batch 20 at t=0),
their inputs (noisy masks, condition features already repeated to the batch) prepared beforehand.
Staged = `net.predict_probabilities(image)`: the same passes plus everything between them (feature
repeats, DDIM arithmetic, re-noising, argmax, STAPLE). Target: staged <= 1.15 x floor.

Each repeat times the staged run and then every pass alone, so the ratio is paired within a repeat;
the reported overhead is the median of the per-repeat ratios. The biggest pieces outside the passes
(repeating the condition features to the batch, the argmax over classes of the 20 draws, STAPLE)
are also timed alone, to show what the overhead is made of. `--profile` adds a torch.profiler table of
one staged run (top operators by self time).

    python benchmarks/overhead.py                      # 2D 256x256 and 3D 32^3 at DNet width 0.25
    python benchmarks/overhead.py --configs 2d-256-w1.0 --repeats 3 --profile
"""
from __future__ import annotations

import argparse

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

TARGET = 1.15


def dnet_inputs(net, image: torch.Tensor, cond: list[torch.Tensor]) -> list[tuple]:
    """(label, x_t, t, cond) of the staged plan's 12 DNet calls, for one image."""
    c = net.sampler.plan
    dev, shape = image.device, (net.num_classes, *image.shape[2:])
    rep = {k: [f.repeat(k, *[1] * (f.ndim - 1)) for f in cond] for k in (1, 2, 2 * c.draws_per_branch)}
    g = torch.Generator(device=dev).manual_seed(0)

    def call(label, k, t):
        return label, torch.randn((k, *shape), device=dev, generator=g), torch.full((k,), t, device=dev), rep[k]
    calls = [call("RS b1", 1, c.diffusion.num_timesteps - 1)]
    calls += [call(f"PM b2 t={t}", 2, t) for t in c.pm_timesteps()]
    calls.append(call(f"DR b{2 * c.draws_per_branch}", 2 * c.draws_per_branch, 0))
    return calls


def profile_staged(net, image, rows: int = 20) -> str:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if image.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        net.predict_probabilities(image)
    key = "self_cuda_time_total" if image.device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def measure(cname: str, args, device: torch.device, sync) -> tuple[dict, str | None]:
    """Paired timings of one configuration: staged run, then every pass alone, per repeat."""
    patch, width = CONFIGS[cname]
    net = build_net(patch, width, device=device)
    torch.manual_seed(1)
    image = torch.randn(1, 3, *patch, device=device)
    profile = None
    with torch.no_grad():
        _, cond = net.condition(image)
        calls = dnet_inputs(net, image, cond)
        masks = net.sample(image).masks  # the 20 sampled masks, for STAPLE alone; also a warm-up
        x0 = torch.randn(20, 1, net.num_classes, *patch, device=device).transpose(0, 1)  # (B, N, C, ...) as sampled
        between = {  # pieces of the staged run outside the passes, each timed alone
            "repeat CF_i to batch 2 and 20": lambda: [f.repeat(k, *[1] * (f.ndim - 1)) for k in (2, 20) for f in cond],
            "argmax over classes of 20 draws": lambda: x0.argmax(2),
            "STAPLE of the 20 masks": lambda: fuse_masks(masks, net.num_classes, net.settings.fusion),
        }
        between_s: dict[str, list[float]] = {k: [] for k in between}
        staged_s, floor_s, staple_s, ratios = [], [], [], []
        parts: dict[str, list[float]] = {"CFENet b1": []}
        parts.update({label: [] for label, *_ in calls})
        for _ in range(args.repeats):
            s, _ = timed(lambda: net.predict_probabilities(image), sync)
            floor = 0.0
            t, _ = timed(lambda: net.condition(image), sync)
            parts["CFENet b1"].append(t)
            floor += t
            for label, x_t, tt, c in calls:
                t, _ = timed(lambda x_t=x_t, tt=tt, c=c: net.dnet(x_t, tt, c), sync)
                parts[label].append(t)
                floor += t
            for k, fn in between.items():
                between_s[k].append(timed(fn, sync)[0])
            st = between_s["STAPLE of the 20 masks"][-1]
            staged_s.append(s), floor_s.append(floor), staple_s.append(st), ratios.append(s / floor)
            print(f"  {cname}: staged {s:.3f} s, floor {floor:.3f} s, ratio {s / floor:.3f}, "
                  f"STAPLE {st * 1e3:.1f} ms", flush=True)
        if args.profile:
            profile = profile_staged(net, image)
    ratio = median(ratios)
    row = {"config": cname, "patch": "x".join(map(str, patch)), "dnet_width": width,
           "staged_s": median(staged_s), "floor_s": median(floor_s),
           "overhead_ratio": ratio, "overhead_pct": 100 * (ratio - 1),
           "staple_s": median(staple_s), "staple_pct_of_floor": 100 * median(staple_s) / median(floor_s),
           "target_met": ratio <= TARGET,
           "parts_median_s": {k: median(v) for k, v in parts.items()},
           "between_passes_median_s": {k: median(v) for k, v in between_s.items()},
           "per_repeat": {"staged_s": staged_s, "floor_s": floor_s, "ratio": ratios}}
    return row, profile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=3)
    ap.add_argument("--configs", nargs="+", default=["2d-256-w0.25", "3d-32-w0.25"], choices=sorted(CONFIGS))
    ap.add_argument("--profile", action="store_true", help="print a torch.profiler table of one staged run")
    args = ap.parse_args()
    apply_smoke(args, "overhead", configs=["2d-32-w0.25"], repeats=1)
    device = setup(args)
    sync = syncer(device)

    rows, profiles = [], {}
    for cname in args.configs:
        row, profile = measure(cname, args, device, sync)
        rows.append(row)
        if profile:
            profiles[cname] = profile
    print()
    print_table(rows, [("config", "config", ""), ("staged_s", "staged s", ".3f"), ("floor_s", "sum of passes s", ".3f"),
                       ("overhead_pct", "overhead %", "+.1f"), ("staple_s", "STAPLE s", ".4f"),
                       ("target_met", f"<= {100 * (TARGET - 1):.0f}%", "")])
    for r in rows:
        p = r["parts_median_s"]
        pm = sum(v for k, v in p.items() if k.startswith("PM"))
        dr = next(v for k, v in p.items() if k.startswith("DR"))
        print(f"{r['config']}: CFENet {p['CFENet b1']:.3f} s, RS {p['RS b1']:.3f} s, PM (10 calls) {pm:.3f} s, "
              f"DR {dr:.3f} s; outside the passes: "
              + ", ".join(f"{k} {v:.3f} s" for k, v in r["between_passes_median_s"].items())
              + f"; staged - floor = {r['staged_s'] - r['floor_s']:.3f} s")
    for cname, table in profiles.items():
        print(f"\nprofile of one staged run, {cname}:\n{table}")
    write_json("overhead", meta(device, repeats=args.repeats, target_ratio=TARGET,
                                timing="medians of per-repeat values; overhead = median of paired ratios"),
               rows, args.json)


if __name__ == "__main__":
    main()
