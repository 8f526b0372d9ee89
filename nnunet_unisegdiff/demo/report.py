"""The demo's report: Table-3 metrics of both methods, the figure grid (image, ground truth, each
method, uncertainty), each method's per-case confidence and review list, the training curves and
report/README.md."""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from PIL import Image  # noqa: E402

from nnunet_unisegdiff.evaluation import evaluate, uncertainty  # noqa: E402
from nnunet_unisegdiff.evaluation import report as tables  # noqa: E402
from nnunet_unisegdiff.evaluation.confidence import case_confidence  # noqa: E402
from nnunet_unisegdiff.evaluation.validation_record import ValidationRecord, model_record  # noqa: E402

REVIEW_ROWS = 5  # cases per method in the README's review list


def fmt_seconds(s: float) -> str:
    if s != s:  # NaN: not measured
        return "n/a"
    return f"{int(s // 60)} min {int(round(s % 60))} s" if s >= 60 else f"{s:.0f} s"


def method_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def pick_grid_cases(cases: Sequence[str], tasks: Mapping[str, str], non_empty: Mapping[str, bool],
                    n: int, false_lesion: Collection[str] = ()) -> list[str]:
    """Up to n cases: cases with a lesion, taking the tasks in turn (first appearance order), and in
    the last row one lesion-free case, one on which some method saw a lesion (`false_lesion`) if any:
    that is where the methods differ."""
    lesion = [c for c in sorted(cases) if non_empty.get(c, False)]
    empty = sorted((c for c in cases if not non_empty.get(c, False)), key=lambda c: (c not in false_lesion, c))
    by_task: dict[str, list[str]] = {}
    for case in lesion:
        by_task.setdefault(tasks.get(case, "all"), []).append(case)
    n_lesion = n - 1 if empty and n >= 2 else n
    picked: list[str] = []
    while len(picked) < n_lesion and any(by_task.values()):
        for queue in by_task.values():
            if queue and len(picked) < n_lesion:
                picked.append(queue.pop(0))
    rest = [c for c in lesion if c not in picked]
    picked += empty[:1] if n >= 2 else []
    return (picked + rest + empty[1:])[:n]


def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def _case_dice(per_case: Sequence[Mapping], case: str) -> float | None:
    values = [row["Dice"] for row in per_case if row["case"] == case and row["Dice"] is not None
              and not (isinstance(row["Dice"], float) and np.isnan(row["Dice"]))]
    return float(np.mean(values)) if values else None


def plot_grid(path: Path, cases: Sequence[str], images_dir: Path, labels_dir: Path,
              pred_dirs: Mapping[str, Path], per_case: Mapping[str, Sequence[Mapping]],
              uncertainty: Mapping[str, np.ndarray], tasks: Mapping[str, str], uncertainty_of: str,
              dpi: int = 110, confidence: Mapping[str, Mapping[str, float]] | None = None) -> None:
    """Rows: cases. Columns: image, ground truth, each method's prediction (with its Dice and, where
    its probabilities were saved, its per-case confidence), and the uncertainty map. Masks are drawn
    over the image; the ground-truth contour is repeated in green on every prediction."""
    confidence = confidence or {}
    colours = {"gt": (0.1, 0.8, 0.2)}
    palette = [(1.0, 0.8, 0.0), (0.2, 0.55, 1.0), (0.95, 0.3, 0.2), (0.7, 0.3, 0.8)]
    methods = list(pred_dirs)
    titles = ["image", "ground truth", *methods, f"{uncertainty_of} uncertainty"]
    fig, axes = plt.subplots(len(cases), len(titles), figsize=(2.1 * len(titles), 2.2 * len(cases) + 0.4),
                             squeeze=False)
    heat = None
    for r, case in enumerate(cases):
        image = _read_png(images_dir / f"{case}_0000.png")
        gt = _read_png(labels_dir / f"{case}.png") > 0
        panels = [("image", None, None), ("gt", gt, colours["gt"])]
        for i, m in enumerate(methods):
            panels.append((m, _read_png(pred_dirs[m] / f"{case}.png") > 0, palette[i % len(palette)]))
        for c, (kind, mask, colour) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            if mask is not None and mask.any():
                ax.imshow(mask, cmap=ListedColormap([colour]), alpha=0.45 * mask.astype(float), interpolation="nearest")
            if kind not in ("image", "gt") and gt.any():
                ax.contour(gt, levels=[0.5], colors=[colours["gt"]], linewidths=0.9)
            if kind in pred_dirs:
                d = _case_dice(per_case.get(kind, []), case)
                if not gt.any():
                    title = "no lesion: none found" if not mask.any() else "no lesion: false lesion"
                else:
                    title = "Dice n/a" if d is None else f"Dice {100 * d:.1f}"
                if case in confidence.get(kind, {}):
                    title += f"\nconfidence {confidence[kind][case]:.2f}"
                ax.set_title(title, fontsize=8)
        ax = axes[r, len(titles) - 1]
        if case in uncertainty:
            heat = ax.imshow(uncertainty[case], cmap="inferno", vmin=0, vmax=1, interpolation="nearest")
            ax.set_title(f"mean entropy {uncertainty[case].mean():.3f}", fontsize=8)
        axes[r, 0].set_ylabel(f"{case}\n{tasks.get(case, '')}", fontsize=7)
    header_y = 1.38 if confidence else 1.25  # above two-line panel titles
    for c, title in enumerate(titles):
        axes[0, c].annotate(title, (0.5, header_y), xycoords="axes fraction", ha="center", va="bottom",
                            fontsize=9, fontweight="bold")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.07, right=0.93, top=1 - (0.9 if confidence else 0.7) / fig.get_figheight(),
                        bottom=0.02, wspace=0.05, hspace=0.45 if confidence else 0.3)
    if heat is not None:
        cax = fig.add_axes([0.94, 0.2, 0.012, 0.6])
        fig.colorbar(heat, cax=cax).set_label("normalised entropy of the posterior", fontsize=8)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def lesion_summary(per_case: Sequence[Mapping]) -> dict:
    """Mean Dice (%) over the cases with a lesion, and how many lesion-free cases got a lesion."""
    lesion = [r["Dice"] for r in per_case if not r["gt_empty"] and r["Dice"] is not None
              and not np.isnan(r["Dice"])]
    empty = [r for r in per_case if r["gt_empty"]]
    return {"lesion_cases": len(lesion), "lesion_dice": float(100 * np.mean(lesion)) if lesion else None,
            "lesion_free_cases": len(empty), "false_lesions": sum(not r["pred_empty"] for r in empty)}


def lesion_lines(by_lesion: Mapping[str, Mapping]) -> list[str]:
    return [f"{name}: Dice {'n/a' if d['lesion_dice'] is None else format(d['lesion_dice'], '.1f')} on the "
            f"{d['lesion_cases']} images with a lesion; a lesion found in {d['false_lesions']} of the "
            f"{d['lesion_free_cases']} lesion-free images" for name, d in by_lesion.items()]


def write_report(report_dir: Path, pred_dirs: Mapping[str, Path], images_dir: Path, labels_dir: Path, *,
                 sources: Path | None = None, evaluation_dir: Path | None = None,
                 training_dirs: Mapping[str, Path] | None = None, grid_cases: int = 6,
                 uncertainty_of: str | None = None, exported: str | None = None) -> dict:
    """Everything after the predictions: `unisegdiff uncertainty` for `uncertainty_of` (default the
    first method), `unisegdiff evaluate` of every method (into `evaluation_dir/<method>/`), and in
    `report_dir`: metrics.md/.csv/.json (one Table-3 row per method), predictions.png and copies of
    the training curves. exported: what `uncertainty_of`'s saved probabilities are (model/pipelines.py
    `exported_map`), for the caption. Returns the summary (the report's README is written by `finish_report`)."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    evaluation_dir = Path(evaluation_dir) if evaluation_dir else report_dir / "evaluation"
    methods = list(pred_dirs)
    uncertainty_of = uncertainty_of or methods[0]
    sources = sources if sources is not None and Path(sources).is_file() else None

    results = evaluate_methods(pred_dirs, labels_dir, sources, evaluation_dir)
    per_case = {name: results[name]["per_case"] for name in methods}
    records = {name: rec for name, folder in (training_dirs or {}).items() if (rec := fold_record(folder))}
    empty_weight = {name: rec.empty_weight for name, rec in records.items()}
    confidence = {name: method_confidence(folder, empty_weight.get(name, 1.0)) for name, folder in pred_dirs.items()}
    unc_rows = uncertainty.write_uncertainty(pred_dirs[uncertainty_of], images_dir=images_dir,
                                             empty_weight=empty_weight.get(uncertainty_of, 1.0))
    grid, cases = draw_predictions(report_dir / "predictions.png", pred_dirs, Path(images_dir), Path(labels_dir),
                                   per_case, uncertainty_of, confidence, grid_cases)

    summary = {**write_metrics(report_dir, methods, results),
               "by_lesion": {name: lesion_summary(per_case[name]) for name in methods},
               **all_case_scores(methods, results),
               "grid": grid.name, "grid_cases": cases, "curves": copy_training_curves(training_dirs or {}, report_dir),
               "report_dir": str(report_dir),
               "evaluation_dirs": {name: str(evaluation_dir / method_slug(name)) for name in methods},
               "prediction_dirs": {name: str(p) for name, p in pred_dirs.items()},
               "uncertainty_dir": os.path.relpath(Path(pred_dirs[uncertainty_of]) / uncertainty.DEFAULT_SUBDIR,
                                                  report_dir),
               "uncertainty_of": uncertainty_of, "exported": exported,
               "most_uncertain": [r["case"] for r in sorted(unc_rows, key=lambda r: -r["mean_entropy"])[:3]],
               "confidence": confidence,
               "validation_records": {name: rec.describe() for name, rec in records.items()},
               "review": {name: review_rows(confidence[name], per_case[name]) for name in methods if confidence[name]}}
    finish_report(report_dir, summary)
    return summary


def write_metrics(report_dir: Path, methods: Sequence[str], results: Mapping[str, Mapping]) -> dict:
    """metrics.csv and metrics.md (one Table-3 row per method) in `report_dir`; returns the summary's
    `methods`, `table` (that Markdown), `counts` (each method's empty-mask counts) and `empty_rule`."""
    rows = [{"method": name, **row} for name in methods for row in results[name]["summary"]]
    table = tables.table3_markdown([(name, results[name]["summary"]) for name in methods])
    counts = "\n".join(f"{name}:\n\n" + tables.counts_markdown(results[name]["summary"]) for name in methods)
    tables.write_csv(report_dir / "metrics.csv", rows)
    (report_dir / "metrics.md").write_text(table)
    return {"methods": list(methods), "table": table, "counts": counts,
            "empty_rule": results[methods[0]]["meta"]["empty_rule_text"]}


def all_case_scores(methods: Sequence[str], results: Mapping[str, Mapping]) -> dict:
    """The summary's `dice_all` (None where no case was scored) and `iou_all`: each method's row over all cases."""
    all_rows = {name: next((r for r in results[name]["summary"] if r["task"] == evaluate.ALL_TASK), {})
                for name in methods}
    dice_all = {name: (None if row.get("mDice") is None or np.isnan(row["mDice"]) else float(row["mDice"]))
                for name, row in all_rows.items()}
    return {"dice_all": dice_all, "iou_all": {name: row.get("mIoU") for name, row in all_rows.items()}}


def draw_predictions(grid: Path, pred_dirs: Mapping[str, Path], images_dir: Path, labels_dir: Path,
                     per_case: Mapping[str, Sequence[Mapping]], uncertainty_of: str,
                     confidence: Mapping[str, Mapping[str, float]], grid_cases: int) -> tuple[Path, list[str]]:
    """predictions.png (`grid`): `grid_cases` cases picked by `pick_grid_cases` (every task, lesion-free
    images, false lesions first), with the entropy of `uncertainty_of`'s saved probabilities.
    Returns the figure's path and the cases drawn."""
    first = per_case[next(iter(pred_dirs))]
    tasks = {row["case"]: row["task"] for row in first}
    non_empty = {row["case"]: not row["gt_empty"] for row in first}
    false_lesion = {r["case"] for rows in per_case.values() for r in rows if r["gt_empty"] and not r["pred_empty"]}
    cases = pick_grid_cases(list(tasks), tasks, non_empty, grid_cases, false_lesion)
    unc_maps = {p.name[:-len(".npz")]: uncertainty.entropy_map(uncertainty.load_probabilities(p))
                for p in sorted(Path(pred_dirs[uncertainty_of]).glob("*.npz"))}
    plot_grid(grid, cases, images_dir, labels_dir, pred_dirs, per_case, unc_maps, tasks, uncertainty_of,
              confidence=confidence)
    return grid, cases


def method_confidence(pred_dir: Path, empty_weight: float = 1.0) -> dict[str, float]:
    """case -> per-case confidence from the method's saved probabilities ({} when none were saved)."""
    return {p.name[:-len(".npz")]: case_confidence(uncertainty.load_probabilities(p),
                                                   empty_weight=empty_weight)
            for p in sorted(Path(pred_dir).glob("*.npz"))}


def fold_record(fold_dir: Path) -> ValidationRecord | None:
    """The fold's validation record (None when it has no validation summary)."""
    try:
        return model_record(fold_dir)
    except FileNotFoundError:
        return None


def review_rows(confidence: Mapping[str, float], per_case: Sequence[Mapping],
                limit: int = REVIEW_ROWS) -> list[dict]:
    """The `limit` least confident cases of one method with what happened to them (Dice, or whether
    a lesion-free image got a lesion), so a reader sees whether low confidence meant a bad mask."""
    rows = {row["case"]: row for row in per_case}
    out = []
    for rank, case in enumerate(sorted(confidence, key=lambda c: (confidence[c], c))[:limit], 1):
        row = rows.get(case, {})
        if row.get("gt_empty"):
            outcome = "no lesion: false lesion" if not row.get("pred_empty") else "no lesion: none found"
        else:
            d = _case_dice(per_case, case)
            outcome = "n/a" if d is None else f"Dice {100 * d:.1f}"
        out.append({"rank": rank, "case": case, "confidence": confidence[case], "outcome": outcome})
    return out


def review_lines(review: Mapping[str, Sequence[Mapping]], records: Mapping[str, str] | None = None) -> list[str]:
    """README section: each method's least confident cases (and each method's validation record)."""
    if not review:
        return []
    weighed = [f"- {name}: {text}" for name, text in (records or {}).items()]
    lines = ["## Review list: the least confident cases", "",
             ("`confidence` (0..1, higher = more likely a good segmentation) is what `unisegdiff uncertainty` "
              "writes to `uncertainty.csv`: the soft Dice between a method's probabilities and its own mask, "
              "and for an empty mask how far its most lesion-like pixel stays below 0.5 "
              "(`docs/method.md`), lowered when the method's empty predictions were worse than its lesion "
              "predictions on its validation cases (`unisegdiff uncertainty --model`). It is computed from "
              "each method's saved probabilities alike."), "", *weighed, *([""] if weighed else []),
             "| method | rank | case | confidence | outcome |", "|---|---:|---|---:|---|"]
    for name, rows in review.items():
        lines += [f"| {name} | {r['rank']} | {r['case']} | {r['confidence']:.3f} | {r['outcome']} |" for r in rows]
    return lines + [""]


def evaluate_methods(pred_dirs: Mapping[str, Path], labels_dir: Path, sources: Path | None,
                     evaluation_dir: Path) -> dict[str, dict]:
    """`unisegdiff evaluate` of each method's predictions, written to `evaluation_dir/<method>/`."""
    results = {}
    for name, folder in pred_dirs.items():
        results[name] = evaluate.evaluate_folder(folder, labels_dir, sources=sources, name=name)
        evaluate.write_outputs(results[name], evaluation_dir / method_slug(name))
    return results


def copy_training_curves(training_dirs: Mapping[str, Path], report_dir: Path) -> dict[str, list[str]]:
    """nnU-Net's progress plots (and the per-stage one) of each method, copied into the report."""
    curves: dict[str, list[str]] = {}
    for name, folder in training_dirs.items():
        for plot in ("progress.png", "progress_stages.png"):
            if (Path(folder) / plot).is_file():
                target = report_dir / f"training_{method_slug(name)}_{plot}"
                shutil.copyfile(Path(folder) / plot, target)
                curves.setdefault(name, []).append(target.name)
    return curves


def uncertainty_source(summary: Mapping) -> str:
    """The caption's words for the probabilities the uncertainty map is computed from."""
    source = f"{summary.get('uncertainty_of', 'the method')}'s saved probabilities"
    return f"{source}: {summary['exported']}" if summary.get("exported") else source


def finish_report(report_dir: Path, summary: dict) -> None:
    """report/README.md and summary.json from the summary (again once the run's timings are known)."""
    report_dir = Path(report_dir)
    run = summary.get("run", {})
    lines = ["# UniSegDiff demo report", ""]
    if run:
        lines += [f"Synthetic lesion dataset `{run['dataset']}`: {run['num_cases']} training images (fold 0 of "
                  f"nnU-Net's 5-fold split), {run['num_test']} held-out images of {run['size']}x{run['size']} "
                  f"pixels. Trainers: " + ", ".join(f"{m} `{t}`" for m, t in run["trainers"].items())
                  + f" (UniSegDiff's CFENet is the baseline's trained model; it adds DNet). Device "
                  f"`{run['device']}`; wall time "
                  f"{fmt_seconds(run['wall_seconds'])}.", ""]
    lines += ["## Held-out images: Dice and IoU (%)", "", summary["table"].rstrip(), "",
              *[f"- {line}" for line in lesion_lines(summary["by_lesion"])], "",
              f"Empty masks: {summary['empty_rule']}", "", summary["counts"].rstrip(), "",
              "Per case: `../evaluation/<method>/per_case.csv`.", "",
              "## Predictions", "",
              ("Image, ground truth (green), each method's mask (ground-truth contour in green on top) with its "
               f"Dice, and the uncertainty map: the normalised entropy of {uncertainty_source(summary)} (black: "
               "one class certain; yellow: lesion and background equally likely). All cases: "
               f"`{summary['uncertainty_dir']}`. Under each mask: its Dice and the method's per-case confidence."),
              "", f"![predictions]({summary['grid']})", "",
              *review_lines(summary.get("review", {}), summary.get("validation_records"))]
    if summary.get("curves"):
        lines += ["## Training curves (nnU-Net's progress plots)", ""]
        for name, files in summary["curves"].items():
            lines += [f"{name}:", ""] + [f"![{name} {f}]({f})" for f in files] + [""]
    if run.get("steps"):
        lines += ["## Steps", "", "| step | time | command |", "|---|---:|---|"]
        for s in run["steps"]:
            cmd = Path(s["command"].split(" ")[0]).name + " " + " ".join(s["command"].split(" ")[1:]) \
                if s["command"] else ""
            lines.append(f"| {s['title']} | {fmt_seconds(s['seconds'])} | `{cmd.strip()}` |" if cmd
                         else f"| {s['title']} | {fmt_seconds(s['seconds'])} | |")
        lines.append("")
    (report_dir / "README.md").write_text("\n".join(lines))
    (report_dir / "summary.json").write_text(json.dumps(tables.json_safe(summary), indent=1) + "\n")
