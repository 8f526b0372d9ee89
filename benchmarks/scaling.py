"""How staged inference and STAPLE scale (question 6 of issue 6), so a user can choose settings.

1. Staged inference time per image (`predict_probabilities`, batch 1) as the number of masks grows
   (2 x `draws_per_branch`: 4, 10, 20, 40) on one 2D plan; and as the image grows (128, 256, 512;
   each size with its own nnU-Net plan: 6, 7, 8 stages) at 20 masks.
2. STAPLE (`fuse_masks`, as inference calls it: two classes, paper mode) as raters grow (4..40,
   256x256) and as pixels grow (128^2..1024^2 and 32^3..96^3, 20 raters), on sampler-like stacks
   (jittered balls plus speckle, from `staple_vs_simpleitk.py`).
Variants of one sweep are timed round-robin; medians over `--repeats`.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --device cuda --width 1.0 --repeats 5
"""
from __future__ import annotations

import argparse

import torch
from _common import (
    add_common_args,
    apply_smoke,
    build_net,
    interleaved,
    make_sampler_like,
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
from nnunet_unisegdiff.diffusion.sampling_plans import StagedPlan


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, repeats=2)
    ap.add_argument("--width", type=float, default=0.25, help="DNet width (1.0 = paper-sized)")
    ap.add_argument("--masks", type=int, nargs="+", default=[4, 10, 20, 40], help="even numbers (two branches)")
    ap.add_argument("--size-for-masks", type=int, default=256)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256, 512])
    ap.add_argument("--raters", type=int, nargs="+", default=[4, 10, 20, 40])
    ap.add_argument("--staple-2d", type=int, nargs="+", default=[128, 256, 512, 1024])
    ap.add_argument("--staple-3d", type=int, nargs="+", default=[32, 64, 96])
    ap.add_argument("--staple-repeats", type=int, default=5)
    ap.add_argument("--skip-inference", action="store_true")
    args = ap.parse_args()
    apply_smoke(args, "scaling", masks=[2, 4], size_for_masks=32, sizes=[32], raters=[2, 4], staple_2d=[16],
                staple_3d=[8], staple_repeats=1, repeats=1)
    return args


def inference_vs_masks(args, device, sync) -> list[dict]:
    """1a. One 2D plan, the staged sampler with 2 x draws_per_branch masks."""
    size = args.size_for_masks
    net = build_net((size, size), args.width, device=device)
    image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)

    def run_with(draws):
        def fn():
            net.sampler = StagedSampler(StagedPlan(draws_per_branch=draws))
            return net.predict_probabilities(image)
        return fn
    fns = {m: run_with(m // 2) for m in args.masks}
    times = interleaved(fns, args.repeats, sync)
    rows = []
    for m in args.masks:
        s = median(times[m])
        rows.append({"masks": m, "size": size, "dnet_width": args.width, "dnet_evaluations": 1 + 20 + m,
                     "seconds": s, "seconds_per_mask": s / m, "all_seconds": times[m]})
        print(f"  {m} masks at {size}^2: {s:.2f} s", flush=True)
    return rows


def inference_vs_size(args, device, sync) -> list[dict]:
    """1b. Image size at 20 masks (a network per size: its own plan)."""
    nets = {s: build_net((s, s), args.width, device=device) for s in args.sizes}
    images = {s: torch.randn(1, 3, s, s, generator=torch.Generator().manual_seed(1)).to(device) for s in args.sizes}
    fns = {s: (lambda s=s: nets[s].predict_probabilities(images[s])) for s in args.sizes}
    times = interleaved(fns, args.repeats, sync)
    rows = []
    for s in args.sizes:
        t = median(times[s])
        rows.append({"size": s, "stages": len(nets[s].dnet.encoder.stages), "masks": 20, "dnet_width": args.width,
                     "seconds": t, "us_per_pixel": 1e6 * t / s ** 2, "all_seconds": times[s]})
        print(f"  {s}^2, 20 masks: {t:.2f} s", flush=True)
    return rows


def staple_sweeps(args, device, sync) -> tuple[list[dict], list[dict]]:
    """2. STAPLE as raters grow (256x256) and as pixels grow (20 raters)."""
    def staple_time(stack: torch.Tensor) -> float:
        masks = stack.long().unsqueeze(0).to(device)  # (1, N, *spatial) label maps
        fuse_masks(masks, 2)
        return median([timed(lambda: fuse_masks(masks, 2), sync)[0] for _ in range(args.staple_repeats)])

    vs_raters, vs_pixels = [], []
    for n in args.raters:
        t = staple_time(make_sampler_like((256, 256), n=n))
        vs_raters.append({"raters": n, "spatial": "256x256", "seconds": t})
    for spatial in [(s, s) for s in args.staple_2d] + [(s, s, s) for s in args.staple_3d]:
        t = staple_time(make_sampler_like(spatial, n=20))
        pixels = int(torch.tensor(spatial).prod())
        vs_pixels.append({"raters": 20, "spatial": "x".join(map(str, spatial)), "pixels": pixels,
                          "seconds": t, "ns_per_pixel": 1e9 * t / pixels})
    return vs_raters, vs_pixels


TABLES = (("inference_vs_masks", [("masks", "masks", "d"), ("size", "size", "d"),
                                  ("dnet_evaluations", "DNet evals", "d"), ("seconds", "s/image", ".2f"),
                                  ("seconds_per_mask", "s/mask", ".3f")]),
          ("inference_vs_size", [("size", "size", "d"), ("stages", "stages", "d"), ("masks", "masks", "d"),
                                 ("seconds", "s/image", ".2f"), ("us_per_pixel", "us/pixel", ".1f")]),
          ("staple_vs_raters", [("raters", "raters", "d"), ("spatial", "spatial", ""),
                                ("seconds", "STAPLE s", ".4f")]),
          ("staple_vs_pixels", [("spatial", "spatial", ""), ("raters", "raters", "d"),
                                ("seconds", "STAPLE s", ".4f"), ("ns_per_pixel", "ns/pixel", ".1f")]))


def main() -> None:
    args = parse_args()
    device = setup(args)
    sync = syncer(device)
    results: dict[str, list[dict]] = {"inference_vs_masks": [], "inference_vs_size": [], "staple_vs_raters": [],
                                      "staple_vs_pixels": []}
    if not args.skip_inference:
        results["inference_vs_masks"] = inference_vs_masks(args, device, sync)
        results["inference_vs_size"] = inference_vs_size(args, device, sync)
    results["staple_vs_raters"], results["staple_vs_pixels"] = staple_sweeps(args, device, sync)
    for key, cols in TABLES:
        if results[key]:
            print(f"\n{key}")
            print_table(results[key], cols)
    write_json("scaling", meta(device, repeats=args.repeats, staple_repeats=args.staple_repeats,
                               timing="median seconds; inference per image (batch 1), STAPLE per fusion"),
               results, args.json)


if __name__ == "__main__":
    main()
