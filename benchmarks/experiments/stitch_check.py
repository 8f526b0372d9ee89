"""Does a linear stitch carry one fold's CFENet features into another fold's basis? (docs/method.md item 19)

    .venv/bin/python benchmarks/experiments/stitch_check.py MODEL_FOLDER PREPROCESSED_DATASET --target 0 --source 1
    .venv/bin/python benchmarks/experiments/stitch_check.py --smoke   # two perturbed untrained tiny CFENets

MODEL_FOLDER: an nnUNetTrainer output folder with both folds trained; PREPROCESSED_DATASET: the dataset's
nnU-Net preprocessed folder (splits_final.json, nnUNetPlans_2d/). The cases both folds trained on are
shuffled and halved: stitches from the source fold into the target fold's basis are fitted on up to
--cases of the first half, for each --ridges value, and scored on the second half and on the source
fold's validation cases (which the target trained on and the source did not, as in phase B): R^2 per stage,
and the Dice of the target's segmentation head read on the stitched features against the source's own
segmentation. A stitch that carries the source's knowledge and not the target's agrees with the source
there, where the two networks themselves disagree.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import _path  # noqa: F401  (first: benchmarks/ on the module path)
import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, print_table, write_json
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_unisegdiff.dice import dice
from nnunet_unisegdiff.model.cfenet import CFENetTap
from nnunet_unisegdiff.model.network import build_cfenet
from nnunet_unisegdiff.model.plans import tiny_plans
from nnunet_unisegdiff.model.stitch import fit_stitch
from nnunet_unisegdiff.training.out_of_fold import cfenet_state_dict, fitting_images
from nnunet_unisegdiff.training.selection import validation_cases

NAME = "stitch_check"


def load_cfenet(model: Path, fold: int) -> tuple[torch.nn.Module, list[int]]:
    """Fold `fold`'s CFENet as nnU-Net builds it from the model folder's plans; and its patch size."""
    checkpoint = torch.load(model / f"fold_{fold}" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    plans = PlansManager(json.loads((model / "plans.json").read_text()))
    config = plans.get_configuration(checkpoint["init_args"]["configuration"])
    dataset = json.loads((model / "dataset.json").read_text())
    net = build_cfenet(plans, config, len(dataset["channel_names"]), len(dataset["labels"]), False)
    net.load_state_dict(cfenet_state_dict(checkpoint))
    return net.eval(), list(config.patch_size)


def features(target: torch.nn.Module, source: torch.nn.Module, images) -> list[tuple]:
    """Per image: (source CF_i, target CF_i, target's segmentation, source's segmentation)."""
    t_tap, s_tap, out = CFENetTap(target), CFENetTap(source), []
    with torch.no_grad():
        for x in images:
            t_logits, t_cf = t_tap(x)
            s_logits, s_cf = s_tap(x)
            out.append((s_cf, t_cf, t_logits.argmax(1)[0].numpy(), s_logits.argmax(1)[0].numpy()))
    return out


def scores(stitch, head: torch.nn.Module, data: list[tuple]) -> dict:
    """Held-out R^2 per stage; Dice of the target's head on stitched features vs the source's segmentation, and
    of the two networks' own segmentations."""
    stages = len(data[0][0])
    r2 = []
    with torch.no_grad():
        mapped = [stitch(d[0]) for d in data]
        for s in range(stages):
            y = torch.cat([d[1][s] for d in data])
            p = torch.cat([m[s] for m in mapped])
            r2.append(1 - float(((p - y) ** 2).sum() / ((y - y.mean((0, *range(2, y.ndim)), keepdim=True)) ** 2).sum()))
        read = [head(m[0]).argmax(1)[0].numpy() for m in mapped]
    return {"r2": [round(v, 4) for v in r2],
            "stitched_vs_source": float(np.mean([dice(r, d[3]) for r, d in zip(read, data)])),
            "target_vs_source": float(np.mean([dice(d[2], d[3]) for d in data]))}


def smoke_inputs(tmp: Path) -> tuple:
    """Two untrained tiny CFENets (the second perturbed) and random images: (target, source, fit, test, held)."""
    pm = PlansManager(tiny_plans(2))
    config = pm.get_configuration("2d")
    torch.manual_seed(0)
    target = build_cfenet(pm, config, 3, 2, False).eval()
    source = build_cfenet(pm, config, 3, 2, False).eval()
    source.load_state_dict(target.state_dict())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.1 * torch.randn_like(p))
    images = [torch.randn(1, 3, *config.patch_size) for _ in range(12)]
    return target, source, images[:6], images[6:9], images[9:]


def real_inputs(args) -> tuple:
    target, patch = load_cfenet(args.model, args.target)
    source, _ = load_cfenet(args.model, args.source)
    splits = json.loads((args.preprocessed / "splits_final.json").read_text())
    both = sorted(set(splits[args.target]["train"]) & set(splits[args.source]["train"]))
    np.random.default_rng(args.seed).shuffle(both)
    half = len(both) // 2
    folder = str(args.preprocessed / "nnUNetPlans_2d")
    read = lambda keys: list(fitting_images(validation_cases(infer_dataset_class(folder), folder, sorted(keys)),  # noqa: E731
                                            patch, torch.device("cpu")))
    return target, source, read(both[:half]), read(both[half:]), read(splits[args.source]["val"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("preprocessed", type=Path, nargs="?")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--source", type=int, default=1)
    ap.add_argument("--cases", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--ridges", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    add_smoke_arg(ap)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    apply_smoke(args, NAME, cases=[3, 6], ridges=[1e-3, 1e-1])
    if not args.smoke and (args.model is None or args.preprocessed is None):
        ap.error("MODEL_FOLDER and PREPROCESSED_DATASET are required (or --smoke)")
    target, source, fit, test, held = smoke_inputs(Path(tempfile.mkdtemp())) if args.smoke else real_inputs(args)
    fit, test, held = features(target, source, fit), features(target, source, test), features(target, source, held)
    head = target.decoder.seg_layers[-1]
    rows = []
    for n in args.cases:
        for ridge in args.ridges:
            stitch = fit_stitch(((d[0], d[1]) for d in fit[:n]), ridge)
            row = {"cases": min(n, len(fit)), "ridge": ridge, "fit_r2": [round(v, 4) for v in stitch.r2]}
            for part, data in (("test", test), ("held", held)):
                row.update({f"{part}_{k}": v for k, v in scores(stitch, head, data).items()})
            rows.append(row)
    print_table([{**r, "test_r2": str(r["test_r2"]), "held_r2": str(r["held_r2"])} for r in rows],
                [("cases", "fit cases", "d"), ("ridge", "ridge", "g"), ("test_r2", "R^2 per stage (test)", "s"),
                 ("test_stitched_vs_source", "head on stitched vs source (test)", ".3f"),
                 ("held_stitched_vs_source", "(source's val)", ".3f"),
                 ("held_target_vs_source", "target vs source (source's val)", ".3f")])
    info = meta(torch.device("cpu"), settings={"target": args.target, "source": args.source, "seed": args.seed})
    for path, placeholder in ((args.model, "WORK/MODEL_FOLDER"), (args.preprocessed, "WORK/PREPROCESSED_DATASET")):
        info["command"] = info["command"].replace(str(path), placeholder) if path else info["command"]
    write_json(NAME, info, {"rows": rows, "cases": {"fit": len(fit), "test": len(test), "held": len(held)}},
               args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
