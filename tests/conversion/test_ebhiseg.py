"""EBHI-Seg converter: class folders with spaces, grey labels with anti-aliased edges and an
all-253 label (threshold at 128, never == 255), case-folded case tokens as groups, cross-class
duplicate names, an image without label, .DS_Store files, bad inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_png, verify_integrity
from PIL import Image

from nnunet_unisegdiff.conversion import ebhiseg
from nnunet_unisegdiff.conversion.common import BadPairError, LayoutError, Orphan
from nnunet_unisegdiff.conversion.registry import convert

S = 24  # real images are 224x224; the converter does not care


def soft_label(seed: int) -> np.ndarray:
    """A blob whose values ramp 0..255 across its border (values 1..254 appear), plus the two
    values either side of the threshold."""
    yy, xx = np.mgrid[:S, :S]
    r = np.hypot(yy - S / 2 + seed % 3, xx - S / 2)
    lab = np.clip((9 - r) * 64 + 128, 0, 255).astype(np.uint8)
    lab[0, 0], lab[0, 1] = 127, 128
    return lab


def put(root: Path, cls: str, name: str, label: np.ndarray | None, seed: int = 0) -> None:
    (root / cls / "image").mkdir(parents=True, exist_ok=True)
    (root / cls / "label").mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / cls / "image" / f"{name}.png")
    if label is not None:
        Image.fromarray(label, mode="L").save(root / cls / "label" / f"{name}.png")


def make_ebhi(src: Path) -> dict[str, np.ndarray]:
    """`EBHI-SEG/<Class>/{image,label}/<name>.png`; returns the Adenocarcinoma labels by name."""
    root = src / "EBHI-SEG"
    adeno = {
        "GT2001837-1-400-001": soft_label(0),
        "GT2012336-1-400-001": np.full((S, S), 253, np.uint8),  # full foreground, all 253
        "GTxc2014065-1-400-001": soft_label(1),
        "GTXC2014065-2-400-002": soft_label(2),  # same case as the one above after case-folding
    }
    for i, (name, lab) in enumerate(adeno.items()):
        put(root, "Adenocarcinoma", name, lab, seed=i)
    put(root, "High-grade IN", "GT2001837-1-400-001", soft_label(1), seed=9)  # cross-class duplicate name
    put(root, "Low-grade IN", "GT2012149-2-400-001", None, seed=10)  # image without label
    put(root, "Low-grade IN", "GT2012150-1-400-001", soft_label(0), seed=11)
    (root / "Adenocarcinoma" / "image" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "readme.md").write_text("EBHI-Seg ... 5170 images")
    return adeno


def test_adenocarcinoma_default_thresholds_at_128_and_groups_case_folded_tokens(tmp_path, nnunet_env, monkeypatch):
    adeno = make_ebhi(tmp_path / "src")
    out = convert("ebhiseg", tmp_path / "src", dataset_id=503, progress=False, quiet=True)
    assert out.name == "Dataset503_EBHISeg"
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["numTraining"] == 4 and ds["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    verify_integrity(out, monkeypatch)
    for name, raw in adeno.items():
        img = read_png(out / "imagesTr" / f"EBHI_Adeno_{name}_0000.png")
        lab = read_png(out / "labelsTr" / f"EBHI_Adeno_{name}.png")
        assert img.shape == (S, S, 3)
        assert np.array_equal(lab, (raw >= 128).astype(np.uint8))
    assert ((0 < adeno["GT2001837-1-400-001"]) & (adeno["GT2001837-1-400-001"] < 255)).any()
    lab = read_png(out / "labelsTr" / "EBHI_Adeno_GT2001837-1-400-001.png")
    assert lab[0, 0] == 0 and lab[0, 1] == 1  # 127 background, 128 foreground
    assert read_png(out / "labelsTr" / "EBHI_Adeno_GT2012336-1-400-001.png").all()  # all-253 is all lesion
    table = json.loads((out / "sources.json").read_text())
    assert sorted({r["group"] for r in table.values()}) == ["gt2001837", "gt2012336", "gtxc2014065"]


def test_all_classes_keep_duplicate_names_apart_and_report_the_orphan(tmp_path, nnunet_env):
    make_ebhi(tmp_path / "src")
    items = list(ebhiseg.read(tmp_path / "src" / "EBHI-SEG", classes="all"))
    orphans = [i for i in items if isinstance(i, Orphan)]
    cases = [i for i in items if not isinstance(i, Orphan)]
    assert [Path(o.path).name for o in orphans] == ["GT2012149-2-400-001.png"]
    ids = [c.case_id for c in cases]
    assert len(ids) == len(set(ids)) == 6
    assert {"EBHI_Adeno_GT2001837-1-400-001", "EBHI_HGIN_GT2001837-1-400-001"} <= set(ids)
    by_id = {c.case_id: c for c in cases}
    assert by_id["EBHI_HGIN_GT2001837-1-400-001"].group == by_id["EBHI_Adeno_GT2001837-1-400-001"].group
    out = convert("ebhiseg", tmp_path / "src", dataset_id=504, progress=False, quiet=True,
                  classes="high-grade in, Low-grade IN")
    assert out.name == "Dataset504_EBHISeg_HGIN-LGIN"
    summary = json.loads((out / "conversion_summary.json").read_text())
    assert summary["cases_written"] == 2 and "GT2012149-2-400-001.png" in summary["orphans_skipped"][0]


def test_unknown_class_lists_the_available_ones(tmp_path):
    make_ebhi(tmp_path / "src")
    with pytest.raises(LayoutError, match=r"class 'Carcinoid' not found; available: Adenocarcinoma, High-grade IN"):
        list(ebhiseg.read(tmp_path / "src", classes="Carcinoid"))


@pytest.mark.parametrize("problem, match", [
    ("size", r"GT2012336-1-400-001\.png \+ .*GT2012336-1-400-001\.png: size mismatch, image 24x24 vs label 20x24"),
    ("corrupt", r"label/GT2012336-1-400-001\.png: cannot read image")])
def test_bad_label_names_the_files_and_leaves_no_dataset(tmp_path, nnunet_env, problem, match):
    make_ebhi(tmp_path / "src")
    bad = tmp_path / "src" / "EBHI-SEG" / "Adenocarcinoma" / "label" / "GT2012336-1-400-001.png"
    if problem == "size":
        Image.fromarray(np.full((S, 20), 255, np.uint8)).save(bad)
    else:
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 30)
    with pytest.raises(BadPairError, match=match):
        convert("ebhiseg", tmp_path / "src", dataset_id=503, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []


def test_wrong_layout_is_a_layout_error(tmp_path, nnunet_env):
    (tmp_path / "src" / "EBHI-SEG" / "Adenocarcinoma" / "images").mkdir(parents=True)
    with pytest.raises(LayoutError, match="unknown EBHI-Seg layout"):
        convert("ebhiseg", tmp_path / "src", dataset_id=503, progress=False, quiet=True)
    assert list((nnunet_env / "nnUNet_raw").iterdir()) == []
