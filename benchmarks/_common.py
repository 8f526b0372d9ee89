"""Shared pieces of the benchmark scripts: nnU-Net-like plans, the networks, timing, tables, JSON.

Plans come from the package's plan builder (`nnunet_unisegdiff.model.plans.unet_plans`), sized the
way nnU-Net's planner sizes them (256x256 RGB -> 7 stages, 32..512 features, 2 decoder convs,
batch 2). Timings are medians over repeats; CUDA is synchronised around every timed call.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
# when the benchmark started and the machine's load then (timezone.utc: Python 3.10 has no datetime.UTC)
_START = (datetime.now(timezone.utc), os.getloadavg())  # noqa: UP017
os.environ.setdefault("nnUNet_compile", "0")  # before nnU-Net is imported

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from nnunet_unisegdiff.diffusion.sampling_plans import SamplingPlan, StagedPlan  # noqa: E402
from nnunet_unisegdiff.model.network import UniSegDiffNetwork, UniSegDiffSettings, build_unisegdiff_network  # noqa: E402
from nnunet_unisegdiff.model.plans import nnunet_features, unet_plans  # noqa: E402

CONFIGS = {  # name: (patch, DNet width); CFENet is always the full nnU-Net plan of the patch
    "2d-256-w1.0": ((256, 256), 1.0),   # paper-sized: nnU-Net's 7-stage 256x256 plan, DNet at full width
    "2d-256-w0.5": ((256, 256), 0.5),
    "2d-256-w0.25": ((256, 256), 0.25),
    "2d-128-w0.25": ((128, 128), 0.25),
    "3d-32-w0.25": ((32, 32, 32), 0.25),
    "3d-64-w0.25": ((64, 64, 64), 0.25),
    "3d-128-w1.0": ((128, 128, 128), 1.0),
    "2d-32-w0.25": ((32, 32), 0.25),    # --smoke
}


def nnunet_plan(patch: Sequence[int], features: Sequence[int] | None = None, batch_size: int = 2) -> tuple:
    """(PlansManager, ConfigurationManager) for an nnU-Net-like PlainConvUNet plan of `patch`."""
    plans = unet_plans(patch, features or nnunet_features(patch), num_channels=3, batch_size=batch_size)
    pm = PlansManager(plans)
    return pm, pm.get_configuration(f"{len(patch)}d")


def build_net(patch: Sequence[int], width: float = 1.0, in_ch: int = 3, classes: int = 2,
              sampler: SamplingPlan | None = None, features: Sequence[int] | None = None,
              deep_supervision: bool = False, seed: int = 0, device: str | torch.device = "cpu",
              **settings) -> UniSegDiffNetwork:
    """Randomly initialised composite (cost does not depend on weights), eval mode, DNet 'trained'."""
    pm, cm = nnunet_plan(patch, features)
    torch.manual_seed(seed)
    net = build_unisegdiff_network(pm, cm, in_ch, classes, deep_supervision,
                                   UniSegDiffSettings(dnet_width=width, sampler=sampler or StagedPlan(),
                                                      **settings))
    net.dnet_trained.fill_(True)
    return net.to(device).eval()


def build_unet(patch: Sequence[int], in_ch: int = 3, classes: int = 2, deep_supervision: bool = True,
               features: Sequence[int] | None = None, seed: int = 0, device: str | torch.device = "cpu"):
    """The plan's UNet alone, as nnUNetTrainer builds it (phase A / CFENet)."""
    _, cm = nnunet_plan(patch, features)
    torch.manual_seed(seed)
    return get_network_from_plans(cm.network_arch_class_name, cm.network_arch_init_kwargs,
                                  cm.network_arch_init_kwargs_req_import, in_ch, classes, allow_init=True,
                                  deep_supervision=deep_supervision).to(device)


def ds_targets(labels: torch.Tensor, outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.nn.functional.interpolate(labels, size=o.shape[2:], mode="nearest") for o in outputs]


def coordinate_grids(spatial: tuple[int, ...]) -> list[torch.Tensor]:
    return list(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in spatial], indexing="ij"))


def make_sampler_like(spatial: tuple[int, ...], n: int = 20, seed: int = 0) -> torch.Tensor:
    """``sampler`` stack (n, *spatial) uint8: balls (radius side/6) with jittered centre and radius, 0.2% speckle."""
    g = torch.Generator().manual_seed(seed)
    grids = coordinate_grids(spatial)
    out = []
    for _ in range(n):
        centre = [(s - 1) / 2 + 1.5 * torch.randn((), generator=g).item() for s in spatial]
        radius = min(spatial) / 6 * (1 + 0.05 * torch.randn((), generator=g).item())
        ball = sum((x - c) ** 2 for x, c in zip(grids, centre)) <= radius**2
        out.append(ball ^ (torch.rand(spatial, generator=g) < 0.002))
    return torch.stack(out).to(torch.uint8)


def rss_mib(field: str = "VmRSS") -> float:
    """This process's resident set size (VmRSS) or its peak (VmHWM), MiB, from /proc/self/status.

    VmHWM rather than getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec, so a
    subprocess started by a big parent reports the parent's size as its own peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def syncer(device: torch.device) -> Callable[[], None]:
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> tuple[float, object]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None],
                warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of each function, run round-robin (A B C A B C ...) so that changes in the
    machine's load hit every variant alike; `warmup` untimed rounds first."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn, sync)[0])
    return times


def meta(device: torch.device, **extra) -> dict:
    m = {"date": _START[0].strftime("%Y-%m-%d %H:%M UTC"), "device": str(device),
         "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
         "cpu": _cpu_name(), "python": platform.python_version(),
         "load_average_at_start": list(_START[1]), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}
    if device.type == "cuda":
        m["gpu"] = torch.cuda.get_device_name(device)
    m.update(extra)
    return m


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_json(name: str, meta_: dict, results, path: Path | None = None) -> Path:
    meta_ = dict(meta_, load_average_at_end=list(os.getloadavg()))
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta_, "results": results}, indent=2) + "\n")
    print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return path


def replace_paths(info: dict, placeholders: dict[str, str]) -> dict:
    """`info` (JSON-able) with each machine path replaced by its placeholder (DOWNLOAD, WORK), longest first so
    that a folder inside another gets its own name: results files name no path of the machine they ran on."""
    text = json.dumps(info)
    for old, new in sorted(placeholders.items(), key=lambda kv: -len(kv[0])):
        text = text.replace(old, new)
    return json.loads(text)


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """columns: (key, header, format spec) ; missing values print as '-'."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append([("-" if r.get(k) is None else format(r[k], f)) for k, _, f in columns])
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    for j, row in enumerate(cells):
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
        if j == 0:
            print("  ".join("-" * w for w in widths))


def add_smoke_arg(ap) -> None:
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes, seconds: checks that the script runs (results go to a temporary folder "
                         "unless --json is given)")


def apply_smoke(args, name: str, **tiny) -> None:
    """With --smoke: the `tiny` values replace those arguments and, without --json, the JSON goes to a
    temporary folder, so a smoke run never overwrites benchmarks/results/."""
    if not args.smoke:
        return
    for key, value in tiny.items():
        setattr(args, key, value)
    if args.json is None:
        args.json = Path(tempfile.mkdtemp(prefix=f"{name}_smoke_")) / f"{name}.json"


def add_common_args(ap, repeats: int | None = 3) -> None:
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    if repeats is not None:
        ap.add_argument("--repeats", type=int, default=repeats, help="timed repeats per variant (median reported)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default 1 on the CPU: on shared, busy cores OpenMP's parallel regions "
                         "wait for descheduled threads, measured 9-17x slower with 2 threads at load 4 on 2 cores)")
    ap.add_argument("--json", type=Path, default=None, help="output path (default benchmarks/results/<name>.json)")
    add_smoke_arg(ap)


def setup(args) -> torch.device:
    device = torch.device(args.device)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return device
