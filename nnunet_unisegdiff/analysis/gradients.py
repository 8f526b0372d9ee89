"""`unisegdiff gradients`: the paper's Figure 1 (top left), mean gradient magnitude of DNet against
the timestep for the eps target, the x0 target and UniSegDiff's staged objective.

The paper's argument (section 1): with the eps target a denoiser spends its gradient on small
timesteps (low-noise x_t), with the x0 target on large ones, while inference needs both; the staged
objective (RS/PM/DR, `staged.py`) spreads it. This command makes that visible for a model:

* MODEL_DIR an nnU-Net trainer folder (`$nnUNet_results/DatasetX/TRAINER__PLANS__2d`): the trained
  composite of `fold_F/checkpoint_final.pth` (its DNet as trained, CFENet as trained);
* MODEL_DIR a preprocessed dataset folder (`$nnUNet_preprocessed/DatasetX`): a freshly initialised
  model of `--trainer` built from its plans;
* no MODEL_DIR: a freshly initialised model on the plan nnU-Net makes for `--size` RGB images.

Data: the dataset's preprocessed cases where they exist (`--data preprocessed`), otherwise the
synthetic lesion generator in memory (`--data synthetic`).

Measurement, for each timestep t on a grid and each of `--repeats` noise draws: a fixed batch,
x_t = q_sample(x0, eps, t), the loss of the objective at that drawn t (eps: MSE of the
eps-decoder, DNet told t; x0: nnU-Net's Dice + CE of the x0-decoder, told t; staged: the stage's
told timestep and alpha:beta weights), one backward pass, and the mean |dL/dtheta| over the DNet
parameters that objective trains (everything but the decoder whose loss weight is zero). CFENet is
frozen, its features computed once. Writes `gradient_vs_timestep.png` and `.json`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from nnunet_unisegdiff.analysis.batches import load_batch
from nnunet_unisegdiff.analysis.measure import gradient_profile, timestep_grid
from nnunet_unisegdiff.analysis.models import GradientError, build_model, find_trainer_class, model_source
from nnunet_unisegdiff.analysis.plot import plot_profile

OUTPUT_STEM = "gradient_vs_timestep"


def run(model_dir: Path | None, out_dir: Path, *, fold: int = 0, checkpoint: str = "checkpoint_final.pth",
        configuration: str = "2d", plans_name: str = "nnUNetPlans", trainer: str = "nnUNetTrainerUniSegDiff",
        data: str = "auto", preprocessed: Path | None = None, size: int = 64, batch_size: int = 4,
        num_timesteps: int = 20, repeats: int = 2, seed: int = 0, device: str = "cpu") -> dict:
    """Measure the profile of one model on one batch, write its plot and JSON to `out_dir`."""
    src = model_source(model_dir, fold=fold, checkpoint=checkpoint, configuration=configuration,
                       plans_name=plans_name, trainer=trainer, size=size, preprocessed=preprocessed)
    trainer_cls = find_trainer_class(src.trainer)
    network, pm, cm, seg_loss = build_model(trainer_cls, src.plans, src.dataset_json, src.configuration)
    if src.state is not None:
        network.load_state_dict(src.state)
    model_info = dict(src.info, dnet_trained=bool(network.dnet_trained),
                      dnet_parameters=sum(p.numel() for p in network.dnet.parameters()))
    images, labels, data_info = load_batch(data, cm, src.dataset_json, src.preprocessed, batch_size, seed)

    dev = torch.device(device)
    network = network.to(dev)
    timesteps = timestep_grid(num_timesteps, network.sampler.plan.diffusion.num_timesteps)
    profile = gradient_profile(network, torch.from_numpy(images).to(dev), torch.from_numpy(labels).to(dev),
                               seg_loss, timesteps, repeats=repeats, seed=seed,
                               staged_objective=getattr(trainer_cls, "objective", None))
    profile.update(model=model_info, data=data_info,
                   settings={"repeats": repeats, "seed": seed, "device": device, "configuration": src.configuration},
                   definition="mean |dL/dtheta| over the DNet parameters the objective trains, one backward pass "
                              "per timestep and noise draw on a fixed batch; mean and std over the draws")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{OUTPUT_STEM}.json").write_text(json.dumps(profile, indent=1) + "\n")
    title = (f"DNet mean gradient magnitude vs timestep: {model_info['source']} {src.trainer}, "
             f"{data_info['source'].split(' ')[0]} data (paper Fig. 1, top left)")
    plot_profile(profile, out_dir / f"{OUTPUT_STEM}.png", title)
    return profile


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gradients", help="DNet gradient magnitude vs timestep for eps, x0 and staged targets (paper Fig. 1)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", metavar="MODEL_DIR", nargs="?", type=Path, default=None,
                   help="trainer folder (trained model) or preprocessed dataset folder (fresh model); "
                        "omit for a fresh model on synthetic data")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT_DIR")
    p.add_argument("-f", "--fold", type=int, default=0, help="fold of a trainer folder (default 0)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-c", "--configuration", default="2d", help="for a preprocessed folder (default 2d)")
    p.add_argument("-p", "--plans", default="nnUNetPlans", help="plans name of a preprocessed folder")
    p.add_argument("-tr", "--trainer", default="nnUNetTrainerUniSegDiff",
                   help="trainer whose network a fresh model is (default nnUNetTrainerUniSegDiff)")
    p.add_argument("--data", choices=["auto", "preprocessed", "synthetic"], default="auto",
                   help="auto: the dataset's preprocessed cases where they exist, else synthetic")
    p.add_argument("--preprocessed", type=Path, default=None,
                   help="preprocessed dataset folder to take cases from (default: the model's dataset)")
    p.add_argument("--size", type=int, default=64, help="image side for a model without MODEL_DIR (default 64)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--timesteps", type=int, default=20, help="points on the timestep grid (default 20)")
    p.add_argument("--repeats", type=int, default=2, help="noise draws per timestep (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    try:
        profile = run(args.model_dir, args.output, fold=args.fold, checkpoint=args.checkpoint,
                      configuration=args.configuration, plans_name=args.plans, trainer=args.trainer, data=args.data,
                      preprocessed=args.preprocessed, size=args.size, batch_size=args.batch_size,
                      num_timesteps=args.timesteps, repeats=args.repeats, seed=args.seed, device=args.device)
    except GradientError as e:
        print(f"unisegdiff gradients: error: {e}", file=sys.stderr)
        return 2
    t = np.array(profile["timesteps"])
    print(f"{profile['model']['source']} {profile['model']['trainer']} on {profile['data']['source']} "
          f"({profile['data']['batch_size']} cases):")
    for name, data in profile["objectives"].items():
        g = np.array(data["mean_abs_grad"])
        low = g[t < data["objective"]["low"]].mean()
        high = g[t >= data["objective"]["high"]].mean()
        print(f"  {name:6s} mean |grad| {g.mean():.3g}; t < {data['objective']['low']}: {low:.3g}, "
              f"t >= {data['objective']['high']}: {high:.3g} (ratio small/large t {low / high:.2f})")
    print(f"written: {args.output / (OUTPUT_STEM + '.png')}, {args.output / (OUTPUT_STEM + '.json')}")
    return 0
