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
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

from nnunet_unisegdiff.defaults import DEFAULT_SEED

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class  # noqa: E402
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name  # noqa: E402
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager  # noqa: E402

from nnunet_unisegdiff.conversion.registry import BINARY, RGB  # noqa: E402
from nnunet_unisegdiff.conversion.synthetic import generate_cases  # noqa: E402
from nnunet_unisegdiff.diffusion.staged import StagedObjective, phase_b_loss  # noqa: E402
from nnunet_unisegdiff.model.plans import unet_plans  # noqa: E402
from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR  # noqa: E402
from nnunet_unisegdiff.training import variants  # noqa: E402
from nnunet_unisegdiff.training.trainer import nnUNetTrainerUniSegDiff  # noqa: E402

OBJECTIVE_LABELS = {"eps": "eps target (uniform t)", "x0": "x0 target (uniform t)",
                    "staged": "staged objective (UniSegDiff)"}

OUTPUT_STEM = "gradient_vs_timestep"


class GradientError(ValueError):
    """Bad input (folder of an unknown kind, missing checkpoint or data)."""


# ----------------------------------------------------------------------------- measurement
def objectives(staged=None) -> dict:
    """The three objectives compared, as `StagedObjective`s (the staged one may be a trainer's)."""
    staged = staged if staged is not None and staged.mode == "staged" else StagedObjective()
    return {"eps": StagedObjective(mode="uniform-eps", diffusion=staged.diffusion),
            "x0": StagedObjective(mode="uniform-x0", diffusion=staged.diffusion),
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
    loss, _ = phase_b_loss(lambda x_t, t_told: dnet(x_t, t_told, cond), labels, objective, seg_loss,
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
    network.freeze_cfenet = True
    network.train()
    network.cfenet.requires_grad_(False)
    network.dnet.requires_grad_(True)
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
                        "objective": {"mode": objective.mode, "high": objective.high, "low": objective.low,
                                      "weights": [list(w) for w in objective.weights]}}
    return {"timesteps": list(map(int, timesteps)), "objectives": result}


# ----------------------------------------------------------------------------- plot
def plot_profile(profile: Mapping, path: str | Path, title: str = "") -> None:
    t = np.array(profile["timesteps"])
    objs = profile["objectives"]
    staged = objs.get("staged", {}).get("objective", {"low": 300, "high": 600})
    low, high = staged["low"], staged["high"]
    colours = {"eps": "tab:blue", "x0": "tab:orange", "staged": "tab:green"}
    with plt.style.context("default"):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
        for ax, relative in zip(axes, (False, True)):
            for (lo, hi, text) in ((0, low, "DR"), (low, high, "PM"), (high, t.max() + 1, "RS")):
                ax.axvspan(lo - 0.5, hi - 0.5, color={"DR": "0.93", "PM": "0.97", "RS": "0.9"}[text], zorder=0)
                ax.text((lo + hi) / 2, 1.0, text, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=9, color="0.3")
            for name, data in objs.items():
                mean, std = np.array(data["mean_abs_grad"]), np.array(data["mean_abs_grad_std"])
                scale = mean.mean() if relative else 1.0
                ax.plot(t, mean / scale, marker="o", ms=3, color=colours.get(name), label=data["label"])
                ax.fill_between(t, (mean - std) / scale, (mean + std) / scale, color=colours.get(name), alpha=0.15)
            ax.set_xlabel("timestep t of the noisy mask x_t")
            ax.set_xlim(-5, t.max() + 5)
            ax.set_yscale("log")
            if relative:
                ax.set_ylabel("mean |grad| / its mean over t")
                ax.axhline(1, color="0.5", lw=0.8, ls=":")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
                ax.tick_params(axis="y", which="minor", labelsize=7)
            else:
                ax.set_ylabel("mean |dL/dθ| over DNet parameters")
        axes[0].legend(fontsize=8, loc="best")
        fig.suptitle(title or "DNet's mean gradient magnitude against timestep (UniSegDiff paper, Fig. 1 top left)",
                     fontsize=11)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


# ----------------------------------------------------------------------------- models and data
def synthetic_plans(size: int = 64, num_channels: int = 3) -> dict:
    """The 2d plan nnU-Net makes for `size` x `size` RGB PNGs, for a model without a dataset."""
    return unet_plans([size, size], num_channels=num_channels, dataset_name="Dataset000_SyntheticInMemory",
                      original_spacing=(999.0, 1.0, 1.0))  # nnU-Net's spacing of natural 2D images


def synthetic_dataset_json(num_channels: int = 3) -> dict:
    names = {str(k): v for k, v in RGB.items()} if num_channels == 3 else {str(i): f"c{i}" for i in range(num_channels)}
    return {"channel_names": names, "labels": dict(BINARY), "numTraining": 0, "file_ending": ".png"}


def find_trainer_class(name: str):
    """One of our trainer classes by name (the package's variants first, then nnU-Net's search
    including nnUNet_extTrainer, as nnUNetv2_predict does)."""
    cls = getattr(variants, name, None)
    if cls is None:
        previous = os.environ.get("nnUNet_extTrainer")
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(p for p in (str(TRAINER_DIR), previous) if p)
        try:
            cls = recursive_find_trainer_class_by_name(name)
        except RuntimeError as e:
            raise GradientError(str(e).splitlines()[0]) from None
        finally:
            if previous is None:
                os.environ.pop("nnUNet_extTrainer", None)
            else:
                os.environ["nnUNet_extTrainer"] = previous
    if not (isinstance(cls, type) and issubclass(cls, nnUNetTrainerUniSegDiff)):
        raise GradientError(f"{name} is not a UniSegDiff trainer (it has no DNet)")
    return cls


def build_model(trainer_cls, plans: dict, dataset_json: dict, configuration: str):
    """(network, plans manager, configuration manager, seg loss) as the trainer builds them."""
    pm = PlansManager(plans)
    if configuration not in pm.available_configurations:
        known = ", ".join(pm.available_configurations)
        raise GradientError(f"configuration {configuration!r} not in the plans ({known})")
    cm = pm.get_configuration(configuration)
    lm = pm.get_label_manager(dataset_json)
    if lm.has_regions:
        raise GradientError("region-based labels are not supported by UniSegDiff")
    network = trainer_cls.build_network_architecture(pm, cm, determine_num_input_channels(pm, cm, dataset_json),
                                                     lm.num_segmentation_heads, enable_deep_supervision=False)
    seg_loss = DC_and_CE_loss({"batch_dice": cm.batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                              weight_ce=1, weight_dice=1, ignore_label=lm.ignore_label,
                              dice_class=MemoryEfficientSoftDiceLoss)
    return network, pm, cm, seg_loss


def _crop_or_pad(array: np.ndarray, patch: Sequence[int], centre: Sequence[float]) -> np.ndarray:
    """(C, *spatial) -> (C, *patch), a window around `centre` (zero padding where needed)."""
    out = np.zeros((array.shape[0], *patch), dtype=array.dtype)
    src, dst = [slice(None)], [slice(None)]
    for size, p, c in zip(array.shape[1:], patch, centre):
        start = int(round(c - p / 2))
        start = min(max(start, 0), max(size - p, 0)) if size >= p else start
        lo, hi = max(start, 0), min(start + p, size)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, lo - start + hi - lo))
    out[tuple(dst)] = array[tuple(src)]
    return out


def load_preprocessed_batch(folder: Path, cm, batch_size: int,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A batch of preprocessed cases (lesion cases first), cropped around the lesion to the patch
    size; 2d configurations take each case's slice with the most foreground."""
    data_dir = folder / cm.data_identifier
    if not data_dir.is_dir():
        raise GradientError(f"no preprocessed data in {data_dir}: run nnUNetv2_plan_and_preprocess first, "
                            "or use --data synthetic")
    dataset = infer_dataset_class(str(data_dir))(str(data_dir))
    ids = list(dataset.identifiers)
    np.random.default_rng(seed).shuffle(ids)
    images, spare = [], []
    patch = list(cm.patch_size)
    for case in ids:
        data, seg, _, _ = dataset.load_case(case)
        data, seg = np.asarray(data, dtype=np.float32), np.asarray(seg)
        seg = np.where(seg < 0, 0, seg)  # nnU-Net marks outside-the-image with -1
        if len(patch) == 2:  # (C, Z, H, W): the slice with the most foreground
            z = int((seg[0] > 0).reshape(seg.shape[1], -1).sum(1).argmax())
            data, seg = data[:, z], seg[:, z]
        fg = np.argwhere(seg[0] > 0)
        centre = fg.mean(0) if len(fg) else np.array(seg.shape[1:]) / 2
        item = (_crop_or_pad(data, patch, centre), _crop_or_pad(seg, patch, centre), case)
        (images if len(fg) else spare).append(item)
        if len(images) >= batch_size:
            break
    chosen = (images + spare)[:batch_size]
    if not chosen:
        raise GradientError(f"no cases in {data_dir}")
    return (np.stack([c[0] for c in chosen]), np.stack([c[1] for c in chosen]).astype(np.int64),
            [c[2] for c in chosen])


def synthetic_batch(batch_size: int, size: int, seed: int = DEFAULT_SEED) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Cases of the synthetic generator (with lesions), z-scored per channel like nnU-Net's
    ZScoreNormalization: images (B, 3, size, size), labels (B, 1, size, size)."""
    cases = [c for c in generate_cases(3 * batch_size, seed=seed, size=size, empty_fraction=0.0)][:batch_size]
    images = np.stack([c.image.transpose(2, 0, 1).astype(np.float32) for c in cases])
    mean, std = images.mean(axis=(2, 3), keepdims=True), images.std(axis=(2, 3), keepdims=True)
    images = (images - mean) / np.maximum(std, 1e-8)
    labels = np.stack([c.label[None].astype(np.int64) for c in cases])
    return images, labels, [c.case_id for c in cases]


def model_dir_kind(folder: Path | None, plans_name: str = "nnUNetPlans") -> str:
    if folder is None:
        return "none"
    if not folder.is_dir():
        raise GradientError(f"not a folder: {folder}")
    if (folder / "plans.json").is_file() and any(folder.glob("fold_*")):
        return "trainer"
    if (folder / f"{plans_name}.json").is_file() and (folder / "dataset.json").is_file():
        return "preprocessed"
    raise GradientError(f"{folder} is neither an nnU-Net trainer folder (plans.json, fold_*/) nor a preprocessed "
                        f"dataset folder ({plans_name}.json, dataset.json)")


@dataclass
class ModelSource:
    """What the model is built from: plans, dataset.json and trainer, and trained weights if any."""
    plans: dict
    dataset_json: dict
    configuration: str
    trainer: str
    state: dict | None
    info: dict
    preprocessed: Path | None  # where its preprocessed cases are, if known


def model_source(model_dir: Path | None, *, fold: int, checkpoint: str, configuration: str, plans_name: str,
                 trainer: str, size: int, preprocessed: Path | None) -> ModelSource:
    """A trainer folder's checkpoint, a preprocessed dataset's plans, or the synthetic plan."""
    kind = model_dir_kind(model_dir, plans_name)
    fresh = {"source": "freshly initialised", "trainer": trainer}
    if kind == "trainer":
        return _trained_source(model_dir, fold, checkpoint, configuration, preprocessed)
    if kind == "preprocessed":
        return ModelSource(json.loads((model_dir / f"{plans_name}.json").read_text()),
                           json.loads((model_dir / "dataset.json").read_text()), configuration, trainer, None,
                           fresh, preprocessed or model_dir)
    return ModelSource(synthetic_plans(size), synthetic_dataset_json(), "2d", trainer, None, fresh, preprocessed)


def _trained_source(model_dir: Path, fold: int, checkpoint: str, configuration: str,
                    preprocessed: Path | None) -> ModelSource:
    ckpt_file = model_dir / f"fold_{fold}" / checkpoint
    if not ckpt_file.is_file():
        raise GradientError(f"no checkpoint {ckpt_file}")
    ckpt = torch.load(ckpt_file, map_location="cpu", weights_only=False)
    plans = json.loads((model_dir / "plans.json").read_text())
    if preprocessed is None and os.environ.get("nnUNet_preprocessed"):
        preprocessed = Path(os.environ["nnUNet_preprocessed"]) / plans["dataset_name"]
    info = {"source": "trained", "trainer": ckpt["trainer_name"], "checkpoint": str(ckpt_file),
            "epoch": ckpt.get("current_epoch")}
    return ModelSource(plans, json.loads((model_dir / "dataset.json").read_text()),
                       ckpt.get("init_args", {}).get("configuration", configuration), ckpt["trainer_name"],
                       ckpt["network_weights"], info, preprocessed)


def load_batch(data: str, cm, dataset_json: dict, preprocessed: Path | None, batch_size: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """(images, labels, description) of the fixed batch: preprocessed cases or synthetic ones."""
    if data == "auto":
        data = "preprocessed" if preprocessed is not None and (Path(preprocessed) / cm.data_identifier).is_dir() \
            else "synthetic"
    if data == "preprocessed":
        if preprocessed is None:
            raise GradientError("--data preprocessed needs MODEL_DIR or --preprocessed")
        images, labels, cases = load_preprocessed_batch(Path(preprocessed), cm, batch_size, seed)
        info = {"source": "preprocessed", "folder": str(preprocessed)}
    else:
        patch = list(cm.patch_size)
        if len(patch) != 2 or patch[0] != patch[1]:
            raise GradientError(f"the synthetic generator makes square 2D images; this model's patch is {patch}")
        if len(dataset_json["channel_names"]) != 3:
            raise GradientError("the synthetic generator makes RGB images; this model takes "
                                f"{len(dataset_json['channel_names'])} input channels")
        images, labels, cases = synthetic_batch(batch_size, patch[0])
        info = {"source": "synthetic generator (in memory)"}
    info.update(cases=cases, patch_size=list(images.shape[2:]), batch_size=len(cases))
    return images, labels, info


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
    timesteps = timestep_grid(num_timesteps, network.sampler.config.num_timesteps)
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


# ----------------------------------------------------------------------------- command line
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
