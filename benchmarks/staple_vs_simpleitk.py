"""Time the torch STAPLE (paper mode) against SimpleITK's STAPLEImageFilter.

Stacks of 20 raters (the sampler's count), 256x256 and 64^3, of two kinds:
- ``iid``: a ball plus independent per-pixel flips (rates 2-15% per rater): thousands of distinct
  vote patterns, the worst case for the pattern-based EM;
- ``sampler``: jittered balls (centre sd 1.5 px, radius sd 5%) plus 0.2% speckle, like diffusion samples.
Reports the median seconds per fusion (SimpleITK runs to convergence, its default), the speed-up
and the Dice of the two 0.5-thresholded consensuses.

    python benchmarks/staple_vs_simpleitk.py --device cpu --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from _common import add_smoke_arg, apply_smoke, coordinate_grids, make_sampler_like

from nnunet_unisegdiff import staple
from nnunet_unisegdiff.dice import dice

DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "staple_vs_simpleitk.json"


def make_stack(spatial: tuple[int, ...], n: int = 20, seed: int = 0) -> torch.Tensor:
    """``iid`` stack (n, *spatial) uint8: a centred ball (radius side/4), per-rater flip rates in [2%, 15%]."""
    g = torch.Generator().manual_seed(seed)
    gt = sum((x - (s - 1) / 2) ** 2 for x, s in zip(coordinate_grids(spatial), spatial)) <= (min(spatial) / 4) ** 2
    rates = 0.02 + 0.13 * torch.rand((n,) + (1,) * len(spatial), generator=g)
    return (gt ^ (torch.rand((n, *spatial), generator=g) < rates)).to(torch.uint8)


def time_it(fn, repeats: int, sync) -> tuple[float, float, object]:
    """(median s, min s, last output) over ``repeats`` calls after one warm-up call."""
    out = fn()  # warm-up (allocations, kernels)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="torch device for the torch STAPLE (SimpleITK always on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None, help=f"where to write the results (default {DEFAULT_JSON})")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    add_smoke_arg(ap)
    args = ap.parse_args()
    args.shapes = ((256, 256), (64, 64, 64))
    apply_smoke(args, "staple_vs_simpleitk", shapes=((32, 32), (8, 8, 8)), repeats=1)
    args.json = args.json or DEFAULT_JSON
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    rows = []
    cases = [(f"{kind} 20x{'x'.join(map(str, sp))}", maker, sp)
             for kind, maker in (("iid", make_stack), ("sampler", make_sampler_like))
             for sp in args.shapes]
    for name, maker, spatial in cases:
        stack = maker(spatial)
        imgs = [sitk.GetImageFromArray(m.numpy()) for m in stack]  # sitkUInt8, conversion not timed

        filt = sitk.STAPLEImageFilter()
        filt.SetForegroundValue(1.0)

        def run_sitk(filt=filt, imgs=imgs):
            return sitk.GetArrayViewFromImage(filt.Execute(imgs)).copy()

        stack_dev = stack.to(device)
        t_sitk, t_sitk_min, ref = time_it(run_sitk, args.repeats, lambda: None)
        t_torch, t_torch_min, post = time_it(lambda s=stack_dev: staple(s), args.repeats, sync)
        a, b = post.cpu().numpy() > 0.5, ref > 0.5
        agreement = dice(a, b, labels=(1,), both_empty=0.0)  # as before: two empty masks score 0
        rows.append({"stack": name, "torch_s": t_torch, "simpleitk_s": t_sitk, "speedup": t_sitk / t_torch,
                     "torch_min_s": t_torch_min, "simpleitk_min_s": t_sitk_min,
                     "simpleitk_iterations": filt.GetElapsedIterations(), "dice_thresholded": agreement})

    print(f"{'stack':<24}{'torch paper (s)':>17}{'SimpleITK (s)':>15}{'speed-up':>10}{'Dice@0.5':>10}")
    for r in rows:
        print(f"{r['stack']:<24}{r['torch_s']:>17.4f}{r['simpleitk_s']:>15.4f}{r['speedup']:>9.1f}x"
              f"{r['dice_thresholded']:>10.4f}")
    meta = {"device": str(device), "repeats": args.repeats, "torch": torch.__version__,
            "simpleitk": sitk.Version_VersionString(), "torch_threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "numpy": np.__version__,
            "load_average_1min": os.getloadavg()[0], "timing": "median wall-clock seconds per fusion"}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name(device)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
