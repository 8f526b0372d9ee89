"""Do the 20 draws differ where the model is wrong? Per held-out case of a trained UniSegDiff fold
(issue 14, item 2): the real Dice of the prediction, and scores read from the draws.

    .venv/bin/python benchmarks/draw_agreement.py MODEL_FOLDER RAW_DATASET [--trainer-dir DIR] [--pipeline NAME]
    .venv/bin/python benchmarks/draw_agreement.py --smoke   # an untrained tiny network on synthetic images

MODEL_FOLDER: a UniSegDiff trainer's output folder (fold 0's checkpoint_final.pth); RAW_DATASET: an nnU-Net
raw dataset with imagesTs/labelsTs of single-tile 2D images (what accuracy_real.py writes per split);
--trainer-dir: where a custom trainer class lives (added to nnUNet_extTrainer). Per case and score:

* `confidence`: the soft-Dice confidence of the chosen pipeline's probabilities (or --pipeline's), untempered
  (what models of settings format 2 export);
* `draws_pairwise`, `draws_pairwise_x0`, `draws_pairwise_eps`: mean pairwise Dice among the 20 draws, the x0
  branch's 10 and the eps branch's 10;
* `draws_vs_prediction`: mean Dice of the draws against the exported segmentation;
* `confidence_x_agreement`: confidence times draws_vs_prediction;
* `entropy`: 1 - the mean normalised entropy of the untempered probabilities (uncertainty.csv's old reading);
* `tta_agreement`: mean pairwise Dice of CFENet's segmentations of the image's mirrored copies (nnU-Net's
  test-time mirroring, each flipped back): the agreement signal nnU-Net already has;
* `tempered`: the soft-Dice confidence of those probabilities shrunk toward uniform by the 20 draws' per-pixel
  disagreement (argmax kept; diffusion/fusion.py `temper_by_draws`), what a model exports when it tempers
  (`temper_with_draws`: by default for the pipelines built on the draws), with that map's pixel ECE and Brier
  next to the untempered map's. Results written before tempering shipped used the 10 x0 draws here;
* `tempered_export`: the same, shrunk in full where the draws outvote the exported label (`temper_against_export`,
  tried and not shipped), with its ECE and Brier. Results written before it have no such column.
Failure AUROC at Dice < 0.5 and < 0.8 and AURC (risk 1 - Dice), as in failure_detection.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from _common import add_smoke_arg, apply_smoke, meta, print_table, write_json

from nnunet_unisegdiff.diffusion.fusion import TEMPER_CAP, fuse_masks, temper_by_draws
from nnunet_unisegdiff.evaluation.confidence import case_confidence
from nnunet_unisegdiff.evaluation.failure_metrics import CalibrationAccumulator, aurc, auroc, dice, mean_pairwise_dice
from nnunet_unisegdiff.evaluation.uncertainty import entropy_map
from nnunet_unisegdiff.model.pipelines import PIPELINES, pipeline_probabilities

NAME = "draw_agreement"
SCORES = ("confidence", "entropy", "tta_agreement", "draws_pairwise", "draws_pairwise_x0", "draws_pairwise_eps",
          "draws_vs_prediction", "confidence_x_agreement", "tempered", "tempered_export")


def temper_against_export(probs: torch.Tensor, masks: torch.Tensor, cap: float = TEMPER_CAP) -> torch.Tensor:
    """probs (B, C, *spatial) shrunk toward uniform by `cap` times the share of the draws masks (B, N, *spatial)
    against the exported label (probs' argmax) over 1 - 1/C, at most `cap`: as `temper_by_draws` where that
    label has the draws' plurality and, for two classes, by `cap` wherever the draws outvote it.

    A rule tried and not shipped (benchmarks/README.md, section 10): `temper_by_draws` leaves a pixel crisp
    when every draw contradicts the exported label, the case of a CFENet lesion that no draw finds."""
    c = probs.shape[1]
    agree = fuse_masks(masks, c, "vote").gather(1, probs.argmax(1, keepdim=True))  # (B, 1, *spatial)
    lam = cap * ((1 - agree) / (1 - 1 / c)).clamp(max=1)
    return (1 - lam) * probs + lam / c


@torch.no_grad()
def mirrored_segmentations(net, x: torch.Tensor) -> list[np.ndarray]:
    """CFENet's label maps of x (1, C_in, *spatial) mirrored along every subset of the spatial axes, each
    flipped back (nnU-Net's test-time mirroring: 4 copies in 2D, 8 in 3D)."""
    spatial = list(range(2, x.ndim))
    segs = []
    for k in range(2 ** len(spatial)):
        axes = [a for i, a in enumerate(spatial) if k >> i & 1]
        probs = pipeline_probabilities(net, torch.flip(x, axes), ["cfenet"])["cfenet"]  # (1, C, *spatial)
        segs.append(torch.flip(probs, axes)[0].argmax(0).numpy())
    return segs


@torch.no_grad()
def case_row(net, x: torch.Tensor, gt: np.ndarray, calibration: dict) -> dict:
    """Scores of one preprocessed single-tile image x (1, C_in, *spatial) with ground truth gt (*spatial)."""
    chosen, condition = net.settings.pipeline, net.condition(x)  # CFENet once for both
    probs_t = pipeline_probabilities(net, x, [chosen], condition)[chosen]  # (1, C, *spatial), untempered
    draws_t = net.sample(x, cond=condition[1]).masks  # (1, N, *spatial): x0 branch first, then eps
    probs, temp = probs_t[0].float().numpy(), temper_by_draws(probs_t, draws_t)[0].float().numpy()
    temp_e = temper_against_export(probs_t, draws_t)[0].float().numpy()
    draws = draws_t[0].numpy()
    seg = probs.argmax(0)
    half = draws.shape[0] // 2
    agreement = float(np.mean([dice(d, seg) for d in draws]))
    for name, p in (("untempered", probs), ("tempered", temp), ("tempered_export", temp_e)):
        calibration[name].add(1 - p[0], gt > 0)
    conf = case_confidence(probs)
    return {"dice": dice(seg, gt), "confidence": conf, "entropy": 1.0 - float(entropy_map(probs).mean()),
            "tta_agreement": mean_pairwise_dice(mirrored_segmentations(net, x)),
            "draws_pairwise": mean_pairwise_dice(list(draws)),
            "draws_pairwise_x0": mean_pairwise_dice(list(draws[:half])),
            "draws_pairwise_eps": mean_pairwise_dice(list(draws[half:])), "draws_vs_prediction": agreement,
            "confidence_x_agreement": conf * agreement, "tempered": case_confidence(temp),
            "tempered_export": case_confidence(temp_e)}


def summarize(rows: list[dict], calibration: dict) -> dict:
    d = np.array([r["dice"] for r in rows])
    table = []
    for s in SCORES:
        c = np.array([r[s] for r in rows])
        table.append({"score": s, "mean": float(c.mean()), "auroc_05": auroc(1 - c, d < 0.5),
                      "auroc_08": auroc(1 - c, d < 0.8), "aurc": aurc(c, 1 - d)})
    return {"scores": table, "cases": len(rows), "failures_05": int((d < 0.5).sum()),
            "failures_08": int((d < 0.8).sum()), "aurc_oracle": aurc(d, 1 - d), "mean_dice": float(d.mean()),
            "calibration": {k: {"ece": a.ece(), "brier": a.brier()} for k, a in calibration.items()}}


def model_cases(model: Path, raw: Path, device: torch.device):
    """(nnU-Net's predictor holding the network, [(case, x, gt)]) as nnUNetv2_predict loads and preprocesses
    them."""
    sys.path.insert(0, str(Path(__file__).parent))
    from accuracy import ModelScorer
    scorer = ModelScorer(model, device)
    p = scorer.predictor
    cases = []
    for f in sorted((raw / "imagesTs").glob("*_0000.png")):
        case = f.name[: -len("_0000.png")]
        gt = scorer.rw.read_seg(str(raw / "labelsTs" / f"{case}.png"))[0][0]
        data, props = scorer.rw.read_images([str(f)])
        data, _, _ = scorer.preprocessor.run_case_npy(data, None, props, p.plans_manager, p.configuration_manager,
                                                      p.dataset_json)
        if data.shape[1:] != (1, *gt.shape[-2:]) or gt.shape[0] != 1:
            raise ValueError(f"{f}: not a single-tile 2D image (preprocessed {data.shape[1:]}, label {gt.shape})")
        cases.append((case, torch.from_numpy(np.ascontiguousarray(data[:, 0])).float()[None].to(device), gt[0]))
    return p, cases


def smoke_cases(device: torch.device):
    """A tiny untrained network (DNet marked trained) in an nnU-Net predictor, and six synthetic images: the
    script runs end to end."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_unisegdiff.conversion.synthetic import generate_cases
    from nnunet_unisegdiff.model.network import UniSegDiffSettings, build_unisegdiff_network
    from nnunet_unisegdiff.model.plans import tiny_plans
    pm = PlansManager(tiny_plans(2))
    torch.manual_seed(0)
    net = build_unisegdiff_network(pm, pm.get_configuration("2d"), 3, 2, False,
                                   UniSegDiffSettings(dnet_width=0.5, token_budget=64)).to(device).eval()
    net.dnet_trained.fill_(True)
    cases = []
    for c in generate_cases(6, size=32, empty_fraction=0.3):
        x = torch.from_numpy(c.image).permute(2, 0, 1).float()[None] / 255
        cases.append((c.case_id, x.to(device), (c.label > 0).astype(np.int64)))
    predictor = nnUNetPredictor(use_mirroring=False, device=device, verbose=False, allow_tqdm=False)
    predictor.manual_initialization(net, pm, pm.get_configuration("2d"), None,
                                    {"labels": {"background": 0, "lesion": 1}}, "smoke", None)
    return predictor, cases


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The arguments of a benchmark that reads a trained fold and held-out images (or --smoke)."""
    ap.add_argument("model", type=Path, nargs="?", help="a UniSegDiff trainer's output folder")
    ap.add_argument("raw", type=Path, nargs="?", help="nnU-Net raw dataset with imagesTs and labelsTs")
    ap.add_argument("--trainer-dir", type=Path, default=None, help="folder of a custom trainer class")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None)
    add_smoke_arg(ap)


def load_cases(ap: argparse.ArgumentParser, args: argparse.Namespace):
    """(device, (predictor, cases)) for the arguments of `add_model_args`: the smoke network and images, or the
    trained fold and the raw dataset's held-out images."""
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    if args.smoke:
        return device, smoke_cases(device)
    if args.model is None or args.raw is None:
        ap.error("MODEL_FOLDER and RAW_DATASET are required (or --smoke)")
    if args.trainer_dir is not None:
        from nnunet_unisegdiff.nnunet_ext import TRAINER_DIR
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([str(TRAINER_DIR), str(args.trainer_dir)])
    return device, model_cases(args.model, args.raw, device)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_args(ap)
    ap.add_argument("--pipeline", choices=PIPELINES, default=None,
                    help="score this pipeline's probabilities instead of the one the checkpoint records")
    args = ap.parse_args(argv)
    apply_smoke(args, NAME)
    device, (predictor, cases) = load_cases(ap, args)
    net = predictor.network
    if args.pipeline is not None:
        net.set_settings(replace(net.settings, pipeline=args.pipeline))
    calibration = {k: CalibrationAccumulator() for k in ("untempered", "tempered", "tempered_export")}
    rows = [{"case": case, **case_row(net, x, gt, calibration)} for case, x, gt in cases]
    summary = summarize(rows, calibration)
    print(f"{summary['cases']} cases, pipeline {net.settings.pipeline}, mean Dice {summary['mean_dice']:.3f}, "
          f"failures {summary['failures_05']} (< 0.5) / {summary['failures_08']} (< 0.8), "
          f"oracle AURC {summary['aurc_oracle']:.3f}")
    print_table(summary["scores"], [("score", "score", "s"), ("mean", "mean", ".3f"), ("auroc_05", "AUROC<0.5", ".3f"),
                                    ("auroc_08", "AUROC<0.8", ".3f"), ("aurc", "AURC", ".3f")])
    for k, v in summary["calibration"].items():
        print(f"{k:9s} probabilities: pixel ECE {v['ece']:.4f}, Brier {v['brier']:.4f}")
    write_json(NAME, meta(device, settings={k: str(v) for k, v in vars(args).items()}),
               {"summary": summary, "per_case": rows}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
